package api

// ClusterVersions answers GET /v1/cluster/versions (`meshd version
// --cluster`): what each coordinator runs, and which commands that need a
// feature level the cluster accepts now.
type ClusterVersions struct {
	// Server is the coordinator that answered, from its replica.
	Server  string          `json:"server"`
	Members []MemberVersion `json:"members"`
	// FeatureLevel is the lowest feature level of the members: the leader
	// refuses commands that need more (CodeUpgradeRequired).
	FeatureLevel int             `json:"feature_level"`
	Features     []FeatureStatus `json:"features"`
}

// MemberVersion is what one coordinator of the Raft configuration runs,
// as its record in the replicated state says.
type MemberVersion struct {
	Name string `json:"name"`
	// Version is its build version; empty when it records none.
	Version string `json:"version,omitempty"`
	// FeatureLevel is 0 for a version from before feature levels, and
	// for a member that has not registered.
	FeatureLevel int  `json:"feature_level"`
	Registered   bool `json:"registered"`
}

// FeatureStatus is one command that needs a feature level, and whether
// the cluster accepts it now.
type FeatureStatus struct {
	Command string `json:"command"`
	Level   int    `json:"level"`
	Enabled bool   `json:"enabled"`
	// Outdated are the coordinators below Level, which hold it back.
	Outdated []string `json:"outdated,omitempty"`
}
