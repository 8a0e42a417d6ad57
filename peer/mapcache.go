package peer

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/meshd/meshd/peer/controlclient"
	"github.com/meshd/meshd/pkg/api"
)

// MapFile keeps the last network map in the state dir (0600), so that an
// agent restarted while every coordinator is down still brings the mesh up,
// and resumes its watch from that index when one returns.
const MapFile = "netmap.json"

// snapshot is the map as one full update.
func (m *netMap) snapshot() *api.MapUpdate {
	u := &api.MapUpdate{
		Index: m.index, Full: true, VNet: m.vnet, Self: m.self,
		Coordinators: m.coordinators, STUNServers: m.stunServers, GossipKeys: m.gossipKeys, Policy: m.policy,
	}
	if m.overlay.IsValid() {
		u.Overlay = m.overlay.String()
	}
	if m.overlay6.IsValid() {
		u.Overlay6 = m.overlay6.String()
	}
	for _, p := range m.peers {
		u.Peers = append(u.Peers, p)
	}
	slices.SortFunc(u.Peers, func(a, b api.MapPeer) int { return strings.Compare(a.ID, b.ID) })
	return u
}

func saveMap(dir string, u *api.MapUpdate) error {
	b, err := json.Marshal(u)
	if err != nil {
		return err
	}
	return controlclient.WriteFile(filepath.Join(dir, MapFile), b)
}

// loadMap reads the saved map; (nil, nil) when there is none.
func loadMap(dir string) (*api.MapUpdate, error) {
	b, err := os.ReadFile(filepath.Join(dir, MapFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var u api.MapUpdate
	if err := json.Unmarshal(b, &u); err != nil {
		return nil, fmt.Errorf("read %s: %w", MapFile, err)
	}
	return &u, nil
}
