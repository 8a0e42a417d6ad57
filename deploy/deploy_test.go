// Package deploy checks the deployment files in this directory against the
// meshd binary they run: every Kubernetes manifest decodes strictly into its
// typed object and keeps the invariants the cluster relies on, the systemd
// units pass systemd-analyze, and every flag any of them passes exists in
// the CLI (a renamed flag fails here, not on a production host).
package deploy

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// meshdBin is the meshd binary built once by TestMain.
var meshdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "meshd-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	meshdBin = filepath.Join(dir, "meshd")
	cmd := exec.Command(goTool(), "build", "-o", meshdBin, "../meshd")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build meshd: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// ---------------------------------------------------------------------------
// The CLI's flags.

var (
	helpMu    sync.Mutex
	helpCache = map[string]map[string]bool{}
	flagLine  = regexp.MustCompile(`^\s+(?:-[a-zA-Z], )?--([a-z0-9][a-z0-9-]*)`)
)

// cliFlags returns the long flags `meshd SUB... --help` lists (the
// command's own and the global ones).
func cliFlags(t *testing.T, sub ...string) map[string]bool {
	t.Helper()
	key := strings.Join(sub, " ")
	helpMu.Lock()
	defer helpMu.Unlock()
	if f, ok := helpCache[key]; ok {
		return f
	}
	out, err := exec.Command(meshdBin, append(slices.Clone(sub), "--help")...).CombinedOutput()
	if err != nil {
		t.Fatalf("meshd %s --help: %v\n%s", key, err, out)
	}
	flags := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if m := flagLine.FindStringSubmatch(line); m != nil {
			flags[m[1]] = true
		}
	}
	if !flags["help"] || len(flags) < 3 {
		t.Fatalf("meshd %s --help lists no flags:\n%s", key, out)
	}
	helpCache[key] = flags
	return flags
}

// subcommand splits a meshd command line into its subcommand words
// (coordinator; peer up) and the rest.
func subcommand(args []string) (sub, rest []string) {
	i := 0
	for i < len(args) && !strings.HasPrefix(args[i], "-") {
		i++
	}
	return slices.Clip(args[:i]), args[i:]
}

// checkCLI fails unless every flag in args (a meshd command line without
// the program name) exists in that subcommand's help, and the CLI itself
// parses the whole line: `meshd ARGS --help` rejects unknown flags and
// values of the wrong type (a port that is not a number) before it prints
// the help.
func checkCLI(t *testing.T, where string, args []string) {
	t.Helper()
	sub, rest := subcommand(args)
	if len(sub) == 0 {
		t.Errorf("%s: no meshd subcommand in %q", where, args)
		return
	}
	known := cliFlags(t, sub...)
	seen := 0
	for _, a := range rest {
		switch {
		case strings.HasPrefix(a, "--"):
			name, _, _ := strings.Cut(a[2:], "=")
			if !known[name] {
				t.Errorf("%s: flag --%s is not a flag of `meshd %s` (see `meshd %s --help`)", where, name, strings.Join(sub, " "), strings.Join(sub, " "))
			}
			seen++
		case strings.HasPrefix(a, "-") && len(a) > 1:
			t.Errorf("%s: short flag %q; use the long form", where, a)
		}
	}
	if seen == 0 {
		t.Errorf("%s: no flags in %q", where, args)
	}
	out, err := exec.Command(meshdBin, append(slices.Clone(args), "--help")...).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("Usage:")) {
		t.Errorf("%s: meshd does not accept %q: %v\n%s", where, args, err, out)
	}
}

// flagValues maps each --flag in args to its value ("" for a bool flag
// given alone); the form --flag VALUE is recognised when the next word is
// not a flag.
func flagValues(args []string) map[string]string {
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, val, ok := strings.Cut(a[2:], "=")
		if !ok && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			val = args[i+1]
			i++
		}
		out[name] = val
	}
	return out
}

// ---------------------------------------------------------------------------
// Kubernetes.

const k8sDir = "kubernetes"

type object struct {
	file       string
	kind, name string
	obj        any
}

// newObject returns an empty typed object for apiVersion/kind; only the
// kinds these manifests use are known, so anything else fails the test.
func newObject(apiVersion, kind string) (any, bool) {
	switch apiVersion + " " + kind {
	case "v1 Namespace":
		return &corev1.Namespace{}, true
	case "v1 Service":
		return &corev1.Service{}, true
	case "v1 PersistentVolumeClaim":
		return &corev1.PersistentVolumeClaim{}, true
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}, true
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, true
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	}
	return nil, false
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// loadManifests strictly decodes every document of every manifest (all
// YAML files but kustomization.yaml): unknown or duplicate fields, unknown
// kinds and type mismatches fail.
func loadManifests(t *testing.T) []object {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", k8sDir, err)
	}
	var objs []object
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range docSep.Split(string(b), -1) {
			var probe map[string]any
			if err := yaml.Unmarshal([]byte(doc), &probe); err != nil {
				t.Errorf("%s document %d: %v", f, i, err)
				continue
			}
			if len(probe) == 0 {
				continue // comments only
			}
			var tm struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Errorf("%s document %d: %v", f, i, err)
				continue
			}
			obj, ok := newObject(tm.APIVersion, tm.Kind)
			if !ok {
				t.Errorf("%s document %d: unknown kind %q %q (add it to newObject with its typed object)", f, i, tm.APIVersion, tm.Kind)
				continue
			}
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Errorf("%s document %d (%s): %v", f, i, tm.Kind, err)
				continue
			}
			name := reflectName(obj)
			if name == "" {
				t.Errorf("%s document %d (%s) has no metadata.name", f, i, tm.Kind)
			}
			objs = append(objs, object{file: f, kind: tm.Kind, name: name, obj: obj})
		}
	}
	return objs
}

func reflectName(obj any) string {
	if m, ok := obj.(metav1.Object); ok {
		return m.GetName()
	}
	return ""
}

func namespaceOf(obj any) string {
	if m, ok := obj.(metav1.Object); ok {
		return m.GetNamespace()
	}
	return ""
}

func find[T any](objs []object) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// kustomization is the part of kustomization.yaml these manifests use;
// decoded strictly, so a field added there must be added here.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

func loadKustomization(t *testing.T) kustomization {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(k8sDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	return k
}

// podEnv expands $(VAR) in s the way the kubelet does with the container's
// env: literal values are expanded recursively, field references become
// <fieldPath>. Unknown references are reported (the kubelet would leave
// them as they are, silently).
func podEnv(t *testing.T, where string, c corev1.Container, s string, report bool) string {
	t.Helper()
	vals := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			vals[e.Name] = "<" + e.ValueFrom.FieldRef.FieldPath + ">"
		case e.ValueFrom == nil:
			vals[e.Name] = e.Value
		}
	}
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	unknown := map[string]bool{}
	for range 5 {
		s = ref.ReplaceAllStringFunc(s, func(m string) string {
			name := ref.FindStringSubmatch(m)[1]
			v, ok := vals[name]
			if !ok {
				unknown[name] = true
				return m
			}
			return v
		})
	}
	for name := range unknown {
		if !report {
			break
		}
		t.Errorf("%s: $(%s) is not an env var of container %s (the kubelet would pass it on as it is)", where, name, c.Name)
	}
	return s
}

func labelsMatch(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// mountFor returns the volume whose mount holds path in container c.
func mountFor(spec corev1.PodSpec, c corev1.Container, path string) (corev1.VolumeMount, *corev1.Volume) {
	var best corev1.VolumeMount
	for _, m := range c.VolumeMounts {
		if (path == m.MountPath || strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/")) && len(m.MountPath) > len(best.MountPath) {
			best = m
		}
	}
	if best.Name == "" {
		return best, nil
	}
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == best.Name {
			return best, &spec.Volumes[i]
		}
	}
	return best, nil
}

func containerPort(c corev1.Container, port intOrName) (corev1.ContainerPort, bool) {
	for _, p := range c.Ports {
		if (port.name != "" && p.Name == port.name) || (port.name == "" && p.ContainerPort == port.num) {
			return p, true
		}
	}
	return corev1.ContainerPort{}, false
}

type intOrName struct {
	name string
	num  int32
}

func portOf(s string) int32 {
	_, p, err := net.SplitHostPort(s)
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return -1
	}
	return int32(n)
}

type workload struct {
	kind, name string
	labels     map[string]string
	spec       corev1.PodSpec
}

func workloads(objs []object) []workload {
	var out []workload
	for _, s := range find[*appsv1.StatefulSet](objs) {
		out = append(out, workload{"StatefulSet", s.Name, s.Spec.Template.Labels, s.Spec.Template.Spec})
	}
	for _, d := range find[*appsv1.Deployment](objs) {
		out = append(out, workload{"Deployment", d.Name, d.Spec.Template.Labels, d.Spec.Template.Spec})
	}
	return out
}

func TestKubernetesManifests(t *testing.T) {
	objs := loadManifests(t)
	k := loadKustomization(t)

	t.Run("kustomization", func(t *testing.T) {
		if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
			t.Errorf("kustomization.yaml: apiVersion %q kind %q", k.APIVersion, k.Kind)
		}
		files, _ := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
		var want []string
		for _, f := range files {
			if b := filepath.Base(f); b != "kustomization.yaml" {
				want = append(want, b)
			}
		}
		got := slices.Sorted(slices.Values(k.Resources))
		if !slices.Equal(got, want) {
			t.Errorf("kustomization.yaml resources %v, want every manifest %v", got, want)
		}
		nss := find[*corev1.Namespace](objs)
		if len(nss) != 1 || nss[0].Name != k.Namespace {
			t.Errorf("want one Namespace named %q (kustomization namespace), have %d", k.Namespace, len(nss))
		}
		for _, o := range objs {
			if ns := namespaceOf(o.obj); ns != "" && ns != k.Namespace {
				t.Errorf("%s %s: namespace %q, want %q or none", o.kind, o.name, ns, k.Namespace)
			}
		}
		images := map[string]bool{}
		for _, im := range k.Images {
			images[im.Name] = true
		}
		for _, w := range workloads(objs) {
			for _, c := range w.spec.Containers {
				name, _, _ := strings.Cut(c.Image, ":")
				if c.Image != "meshd:dev" || !images[name] {
					t.Errorf("%s %s: image %q, want meshd:dev with an images: entry for %q in kustomization.yaml", w.kind, w.name, c.Image, name)
				}
			}
		}
	})

	t.Run("flags", func(t *testing.T) {
		n := 0
		for _, w := range workloads(objs) {
			for _, c := range append(slices.Clone(w.spec.InitContainers), w.spec.Containers...) {
				if len(c.Command) > 0 {
					t.Errorf("%s %s container %s: command %q overrides the image's entrypoint /meshd", w.kind, w.name, c.Name, c.Command)
				}
				where := fmt.Sprintf("%s %s container %s", w.kind, w.name, c.Name)
				checkCLI(t, where, c.Args)
				for _, a := range c.Args {
					podEnv(t, where, c, a, true)
				}
				n++
			}
		}
		if n < 2 {
			t.Errorf("%d meshd containers, want the coordinator and the gateway", n)
		}
	})

	t.Run("services", func(t *testing.T) {
		ws := workloads(objs)
		for _, s := range find[*corev1.Service](objs) {
			var sel *workload
			for i := range ws {
				if labelsMatch(s.Spec.Selector, ws[i].labels) {
					sel = &ws[i]
				}
			}
			if sel == nil {
				t.Errorf("Service %s: selector %v matches no pod template", s.Name, s.Spec.Selector)
				continue
			}
			for _, p := range s.Spec.Ports {
				tp := intOrName{name: p.TargetPort.StrVal, num: p.TargetPort.IntVal}
				if tp.name == "" && tp.num == 0 {
					tp.num = p.Port
				}
				cp, ok := containerPort(sel.spec.Containers[0], tp)
				if !ok {
					t.Errorf("Service %s port %s: target %v is no port of %s %s", s.Name, p.Name, p.TargetPort.String(), sel.kind, sel.name)
					continue
				}
				if cp.Protocol != p.Protocol {
					t.Errorf("Service %s port %s: protocol %s, container port %s", s.Name, p.Name, p.Protocol, cp.Protocol)
				}
			}
		}
		for _, p := range find[*policyv1.PodDisruptionBudget](objs) {
			ok := false
			for _, w := range ws {
				ok = ok || (p.Spec.Selector != nil && labelsMatch(p.Spec.Selector.MatchLabels, w.labels))
			}
			if !ok {
				t.Errorf("PodDisruptionBudget %s selects no pod template", p.Name)
			}
		}
	})

	t.Run("coordinators", func(t *testing.T) { checkCoordinators(t, objs) })
	t.Run("gateways", func(t *testing.T) { checkGateways(t, objs) })
}

func checkCoordinators(t *testing.T, objs []object) {
	var sts *appsv1.StatefulSet
	for _, s := range find[*appsv1.StatefulSet](objs) {
		if c := s.Spec.Template.Spec.Containers; len(c) > 0 && len(c[0].Args) > 0 && c[0].Args[0] == "coordinator" {
			if sts != nil {
				t.Fatalf("two coordinator StatefulSets: %s and %s", sts.Name, s.Name)
			}
			sts = s
		}
	}
	if sts == nil {
		t.Fatal("no StatefulSet runs `meshd coordinator`")
	}
	where := "StatefulSet " + sts.Name
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 3 {
		t.Errorf("%s: replicas %v, want 3", where, sts.Spec.Replicas)
	}
	replicas := 3
	if sts.Spec.Replicas != nil {
		replicas = int(*sts.Spec.Replicas)
	}
	if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("%s: podManagementPolicy %q; one coordinator alone never becomes ready, so OrderedReady never starts the second: want Parallel", where, sts.Spec.PodManagementPolicy)
	}
	if sts.Spec.Selector == nil || !labelsMatch(sts.Spec.Selector.MatchLabels, sts.Spec.Template.Labels) {
		t.Errorf("%s: selector does not match the pod template's labels", where)
	}

	// The headless Service giving the pods their names.
	var headless *corev1.Service
	for _, s := range find[*corev1.Service](objs) {
		if s.Name == sts.Spec.ServiceName {
			headless = s
		}
	}
	switch {
	case headless == nil:
		t.Errorf("%s: serviceName %q names no Service", where, sts.Spec.ServiceName)
	case headless.Spec.ClusterIP != corev1.ClusterIPNone:
		t.Errorf("Service %s: clusterIP %q, want None (headless) for the pods' DNS names", headless.Name, headless.Spec.ClusterIP)
	case !headless.Spec.PublishNotReadyAddresses:
		t.Errorf("Service %s: publishNotReadyAddresses must be true: coordinators find each other through these names before any is ready", headless.Name)
	case !labelsMatch(headless.Spec.Selector, sts.Spec.Template.Labels):
		t.Errorf("Service %s does not select the coordinator pods", headless.Name)
	}

	spec := sts.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("%s: %d containers, want 1", where, len(spec.Containers))
	}
	c := spec.Containers[0]
	where += " container " + c.Name
	args := make([]string, len(c.Args))
	for i, a := range c.Args {
		args[i] = podEnv(t, where, c, a, false) // reported in TestKubernetesManifests/flags
	}
	fv := flagValues(args)
	for _, f := range []string{"name", "data-dir", "cluster-key-file", "listen", "raft-listen", "advertise-api", "advertise-raft", "initial-cluster"} {
		if _, ok := fv[f]; !ok {
			t.Errorf("%s: --%s missing", where, f)
		}
	}
	if fv["name"] != "<metadata.name>" {
		t.Errorf("%s: --name=%q, want the pod's name (from the downward API)", where, fv["name"])
	}

	// --initial-cluster: every pod by its stable name, at the Raft port.
	raftPort := portOf(fv["raft-listen"])
	members := strings.Split(fv["initial-cluster"], ",")
	if len(members) != replicas {
		t.Errorf("%s: --initial-cluster has %d members, replicas %d", where, len(members), replicas)
	}
	for i, m := range members {
		name, addr, _ := strings.Cut(m, "=")
		want := fmt.Sprintf("%s-%d", sts.Name, i)
		if name != want {
			t.Errorf("%s: --initial-cluster member %d is %q, want the pod name %q", where, i, name, want)
		}
		host, _, _ := net.SplitHostPort(addr)
		if !strings.HasPrefix(host, want+"."+sts.Spec.ServiceName+".") {
			t.Errorf("%s: --initial-cluster member %s at %q, want %s.%s.<namespace>...", where, name, addr, want, sts.Spec.ServiceName)
		}
		if portOf(addr) != raftPort {
			t.Errorf("%s: --initial-cluster member %s port %d, --raft-listen port %d", where, name, portOf(addr), raftPort)
		}
	}
	if adv := fv["advertise-raft"]; portOf(adv) != raftPort {
		t.Errorf("%s: --advertise-raft %q, want port %d", where, adv, raftPort)
	}

	// --advertise-api: this pod's own name (tokens list every coordinator,
	// and peers ask each for STUN), HTTPS on the listen port.
	apiPort := portOf(fv["listen"])
	u, err := url.Parse(fv["advertise-api"])
	if err != nil || u.Scheme != "https" || u.Port() != strconv.Itoa(int(apiPort)) {
		t.Errorf("%s: --advertise-api %q, want https://HOST:%d", where, fv["advertise-api"], apiPort)
	} else if !strings.HasPrefix(u.Hostname(), "<metadata.name>."+sts.Spec.ServiceName+".") {
		t.Errorf("%s: --advertise-api host %q, want the pod's own name under Service %s", where, u.Hostname(), sts.Spec.ServiceName)
	}
	for name, port := range map[string]int32{"api": apiPort, "raft": raftPort} {
		if p, ok := containerPort(c, intOrName{name: name}); !ok || p.ContainerPort != port || p.Protocol != corev1.ProtocolTCP {
			t.Errorf("%s: container port %q %+v, want TCP %d", where, name, p, port)
		}
	}
	stun := int32(3478)
	if s, ok := fv["stun-listen"]; ok {
		stun = portOf(s)
	}
	if p, ok := containerPort(c, intOrName{name: "stun"}); !ok || p.ContainerPort != stun || p.Protocol != corev1.ProtocolUDP {
		t.Errorf("%s: container port \"stun\" %+v, want UDP %d", where, p, stun)
	}

	// The client Service: the API and STUN, ClusterIP.
	client := false
	for _, s := range find[*corev1.Service](objs) {
		if s.Spec.ClusterIP == corev1.ClusterIPNone || !labelsMatch(s.Spec.Selector, sts.Spec.Template.Labels) {
			continue
		}
		client = true
		if s.Spec.Type != corev1.ServiceTypeClusterIP {
			t.Errorf("Service %s: type %q, want ClusterIP", s.Name, s.Spec.Type)
		}
		var tcp, udp bool
		for _, p := range s.Spec.Ports {
			tcp = tcp || p.Port == apiPort && p.Protocol == corev1.ProtocolTCP
			udp = udp || p.Port == stun && p.Protocol == corev1.ProtocolUDP
		}
		if !tcp || !udp {
			t.Errorf("Service %s: want the API on TCP %d and STUN on UDP %d", s.Name, apiPort, stun)
		}
	}
	if !client {
		t.Errorf("no ClusterIP Service for the coordinators' API")
	}

	// The data directory on the claim, the key from the Secret.
	dataMount, dataVol := mountFor(spec, c, fv["data-dir"])
	if dataMount.Name == "" || dataVol != nil || !slices.ContainsFunc(sts.Spec.VolumeClaimTemplates, func(p corev1.PersistentVolumeClaim) bool { return p.Name == dataMount.Name }) {
		t.Errorf("%s: --data-dir %q is not on a volumeClaimTemplate", where, fv["data-dir"])
	}
	keyMount, keyVol := mountFor(spec, c, fv["cluster-key-file"])
	if keyVol == nil || keyVol.Secret == nil || keyVol.Secret.SecretName != "meshd-cluster-key" {
		t.Errorf("%s: --cluster-key-file %q is not in the Secret meshd-cluster-key", where, fv["cluster-key-file"])
	} else {
		rel := strings.TrimPrefix(fv["cluster-key-file"], strings.TrimSuffix(keyMount.MountPath, "/")+"/")
		key := rel
		for _, it := range keyVol.Secret.Items {
			if it.Path == rel {
				key = it.Key
			}
		}
		if key != "cluster.key" {
			t.Errorf("%s: --cluster-key-file reads Secret key %q; README makes it with --from-file=cluster.key", where, key)
		}
	}

	// Readiness: the health endpoint over HTTPS on the API port (checked
	// against a running coordinator in TestCoordinatorHealthProbe).
	rp := c.ReadinessProbe
	if rp == nil || rp.HTTPGet == nil {
		t.Errorf("%s: no httpGet readiness probe", where)
	} else {
		g := rp.HTTPGet
		p, ok := containerPort(c, intOrName{name: g.Port.StrVal, num: g.Port.IntVal})
		if g.Path != healthPath || g.Scheme != corev1.URISchemeHTTPS || !ok || p.ContainerPort != apiPort {
			t.Errorf("%s: readiness probe %s %s port %s, want HTTPS %s on %d", where, g.Scheme, g.Path, g.Port.String(), healthPath, apiPort)
		}
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("%s: want cpu and memory requests", where)
	}

	// Locked down: not root, nothing writable but the volumes, no capability.
	psc, sc := spec.SecurityContext, c.SecurityContext
	nonRoot := (sc != nil && sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) || (psc != nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot)
	if !nonRoot {
		t.Errorf("%s: want runAsNonRoot", where)
	}
	if psc == nil || psc.RunAsUser == nil || *psc.RunAsUser == 0 || psc.FSGroup == nil {
		t.Errorf("%s: want a numeric non-root runAsUser (the image has no /etc/passwd) and an fsGroup (volume and Secret access)", where)
	}
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		(sc.Privileged != nil && *sc.Privileged) ||
		sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("%s: want readOnlyRootFilesystem, no privilege escalation, capabilities drop ALL and add none", where)
	}
}

func checkGateways(t *testing.T, objs []object) {
	n := 0
	for _, w := range workloads(objs) {
		for _, c := range w.spec.Containers {
			if sub, _ := subcommand(c.Args); strings.Join(sub, " ") != "peer up" {
				continue
			}
			n++
			where := fmt.Sprintf("%s %s container %s", w.kind, w.name, c.Name)
			fv := flagValues(c.Args)
			sc := c.SecurityContext
			if sc == nil || sc.Capabilities == nil {
				t.Errorf("%s: no securityContext.capabilities", where)
				continue
			}
			if sc.Privileged != nil && *sc.Privileged {
				t.Errorf("%s: privileged; it needs only NET_ADMIN and NET_RAW", where)
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("%s: want allowPrivilegeEscalation: false", where)
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("%s: want readOnlyRootFilesystem", where)
			}
			add := slices.Sorted(slices.Values(sc.Capabilities.Add))
			if !slices.Equal(add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) || !slices.Contains(sc.Capabilities.Drop, "ALL") {
				t.Errorf("%s: capabilities add %v drop %v, want add exactly NET_ADMIN and NET_RAW, drop ALL", where, sc.Capabilities.Add, sc.Capabilities.Drop)
			}
			if w.spec.HostPID || w.spec.HostIPC {
				t.Errorf("%s: hostPID/hostIPC", where)
			}
			if psc := w.spec.SecurityContext; psc != nil && len(psc.Sysctls) > 0 {
				t.Errorf("%s: securityContext.sysctls %v: net.ipv4.ip_forward is an unsafe sysctl that kubelets refuse by default (see the comment in the manifest)", where, psc.Sysctls)
			}
			tunMount, tun := mountFor(w.spec, c, "/dev/net/tun")
			if tun == nil || tun.HostPath == nil || tun.HostPath.Path != "/dev/net/tun" || tun.HostPath.Type == nil ||
				*tun.HostPath.Type != corev1.HostPathCharDev || tunMount.MountPath != "/dev/net/tun" {
				t.Errorf("%s: want /dev/net/tun mounted from a hostPath of type CharDevice", where)
			}
			if _, v := mountFor(w.spec, c, fv["token-file"]); fv["token-file"] == "" || v == nil || v.Secret == nil {
				t.Errorf("%s: --token-file %q is not in a Secret volume", where, fv["token-file"])
			}
			if _, ok := fv["token"]; ok {
				t.Errorf("%s: --token on the command line; use --token-file with a Secret", where)
			}
			if _, v := mountFor(w.spec, c, fv["state-dir"]); fv["state-dir"] == "" || v == nil || v.PersistentVolumeClaim == nil {
				t.Errorf("%s: --state-dir %q is not on a PersistentVolumeClaim (the identity must survive the pod)", where, fv["state-dir"])
			} else {
				claim := v.PersistentVolumeClaim.ClaimName
				if !slices.ContainsFunc(find[*corev1.PersistentVolumeClaim](objs), func(p *corev1.PersistentVolumeClaim) bool { return p.Name == claim }) {
					t.Errorf("%s: claim %q is not in the manifests", where, claim)
				}
			}
			if _, v := mountFor(w.spec, c, "/var/run/wireguard/x.sock"); v == nil {
				t.Errorf("%s: nothing writable at /var/run/wireguard (wireguard-go's UAPI socket; the root filesystem is read-only)", where)
			}
			if iface := fv["interface"]; len(iface) > 15 {
				t.Errorf("%s: --interface %q is longer than 15 characters", where, iface)
			}
			if fv["name"] == "" {
				t.Errorf("%s: want a fixed --name (a pod's host name changes on every reschedule)", where)
			}
			if w.kind == "Deployment" {
				for _, d := range find[*appsv1.Deployment](objs) {
					if d.Name != w.name {
						continue
					}
					if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
						t.Errorf("%s: one peer identity (--name, state volume) needs replicas 1 and strategy Recreate", where)
					}
				}
			}
		}
	}
	if n == 0 {
		t.Error("no workload runs `meshd peer up`")
	}
}

// ---------------------------------------------------------------------------
// The health endpoint the readiness probe uses.

const healthPath = "/v1/health"

func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestCoordinatorHealthProbe starts a single-node coordinator and checks
// that the probe's request (HTTPS GET /v1/health, certificate not checked,
// as the kubelet does) succeeds.
func TestCoordinatorHealthProbe(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "cluster.key")
	key, err := exec.Command(meshdBin, "coordinator", "keygen").Output()
	if err != nil {
		t.Fatalf("keygen: %v", err)
	}
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	api := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "tcp")))
	raft := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "tcp")))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs bytes.Buffer
	cmd := exec.CommandContext(ctx, meshdBin, "coordinator", "--name=c1", "--data-dir="+filepath.Join(dir, "data"),
		"--listen="+api, "--raft-listen="+raft, "--cluster-key-file="+keyFile, "--stun-listen=off")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() { cancel(); <-done }()

	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		select {
		case <-done:
			t.Fatalf("coordinator exited: %s", logs.String())
		default:
		}
		resp, err := client.Get("https://" + api + healthPath)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%s: %s", resp.Status, body)
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("GET https://%s%s never answered 200: %s\n%s", api, healthPath, last, logs.String())
}

// ---------------------------------------------------------------------------
// systemd.

const sysDir = "systemd"

// unitFile is a parsed unit: section -> key -> values in order.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	section := ""
	var cont strings.Builder
	for _, raw := range strings.Split(string(b), "\n") {
		line := strings.TrimSpace(raw)
		if cont.Len() == 0 && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cont.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		if cont.Len() > 0 {
			if line != "" && (line[0] == '#' || line[0] == ';') {
				continue // comment lines inside a continuation are skipped
			}
			cont.WriteString(line)
			line = cont.String()
			cont.Reset()
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			t.Errorf("%s: cannot parse %q", path, line)
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		u[section][k] = append(u[section][k], v)
	}
	return u
}

func (u unitFile) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return "\x00unset"
	}
	return v[len(v)-1]
}

// words splits a command line or an assignment list the way systemd does:
// at whitespace, with "..." and '...' quoting.
func words(s string) []string {
	var out []string
	var cur strings.Builder
	in, quote := false, byte(0)
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case quote != 0 && ch == quote:
			quote = 0
		case quote != 0:
			if ch == '\\' && quote == '"' && i+1 < len(s) {
				i++
				ch = s[i]
			}
			cur.WriteByte(ch)
		case ch == '"' || ch == '\'':
			quote, in = ch, true
		case ch == ' ' || ch == '\t':
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(ch)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

// parseEnvFile reads KEY=VALUE lines as systemd's EnvironmentFile= does.
func parseEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, raw := range strings.Split(string(b), "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`).MatchString(k) {
			t.Errorf("%s: not KEY=VALUE: %q", path, line)
			continue
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		env[k] = v
	}
	return env
}

var (
	specifier = regexp.MustCompile(`%[a-zA-Z%]`)
	braceVar  = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)
	plainVar  = regexp.MustCompile(`^\$([A-Za-z_][A-Za-z0-9_]*)$`)
	anyVar    = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`)
)

// execStart expands a unit's ExecStart for instance inst with env the way
// systemd does: specifiers, ${VAR} in place (one word), $VAR alone split at
// whitespace.
func execStart(t *testing.T, name string, u unitFile, inst string, env map[string]string) []string {
	t.Helper()
	line := u.get("Service", "ExecStart")
	spec := map[string]string{"%i": inst, "%I": inst, "%S": "/var/lib", "%d": "/run/credentials/" + name, "%%": "%", "%n": name}
	var out []string
	for _, w := range words(line) {
		w = specifier.ReplaceAllStringFunc(w, func(s string) string {
			v, ok := spec[s]
			if !ok {
				t.Errorf("%s: specifier %s not handled by this test", name, s)
			}
			return v
		})
		if m := plainVar.FindStringSubmatch(w); m != nil {
			out = append(out, strings.Fields(env[m[1]])...)
			continue
		}
		out = append(out, braceVar.ReplaceAllStringFunc(w, func(s string) string {
			k := braceVar.FindStringSubmatch(s)[1]
			if _, ok := env[k]; !ok {
				t.Errorf("%s: ExecStart uses ${%s}, which no Environment= or env file sets", name, k)
			}
			return env[k]
		}))
	}
	return out
}

// unitEnv is the unit's Environment= defaults overridden by the env file.
func unitEnv(t *testing.T, u unitFile, file map[string]string) map[string]string {
	env := map[string]string{}
	for _, line := range u["Service"]["Environment"] {
		for _, a := range words(line) {
			k, v, ok := strings.Cut(a, "=")
			if !ok {
				t.Errorf("Environment=%s: not KEY=VALUE", line)
			}
			env[k] = v
		}
	}
	for k, v := range file {
		env[k] = v
	}
	return env
}

func expectKeys(t *testing.T, name string, u unitFile, want map[string]string) {
	t.Helper()
	for k, v := range want {
		sec, key, _ := strings.Cut(k, ".")
		if got := u.get(sec, key); got != v {
			if got == "\x00unset" {
				got = "unset"
			}
			t.Errorf("%s: [%s] %s=%q, want %q", name, sec, key, got, v)
		}
	}
}

// flagsInText returns the --flags mentioned anywhere in a file, comments
// included (examples in comments must be right too).
func flagsInText(t *testing.T, path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range regexp.MustCompile(`(?:^|[\s"'=])--([a-z][a-z0-9-]*)`).FindAllStringSubmatch(string(b), -1) {
		out = append(out, m[1])
	}
	return out
}

func TestSystemdUnits(t *testing.T) {
	coordPath := filepath.Join(sysDir, "meshd-coordinator.service")
	peerPath := filepath.Join(sysDir, "meshd-peer@.service")
	coord, peer := parseUnit(t, coordPath), parseUnit(t, peerPath)
	coordEnvFile := filepath.Join(sysDir, "coordinator.env.example")
	peerEnvFile := filepath.Join(sysDir, "peer.env.example")
	coordFile, peerFile := parseEnvFile(t, coordEnvFile), parseEnvFile(t, peerEnvFile)

	t.Run("coordinator", func(t *testing.T) {
		name := "meshd-coordinator.service"
		expectKeys(t, name, coord, map[string]string{
			"Service.EnvironmentFile":         "/etc/meshd/coordinator.env",
			"Service.Restart":                 "on-failure",
			"Service.DynamicUser":             "yes",
			"Service.StateDirectory":          "meshd/coordinator",
			"Service.NoNewPrivileges":         "yes",
			"Service.ProtectSystem":           "strict",
			"Service.ProtectHome":             "yes",
			"Service.PrivateTmp":              "yes",
			"Service.PrivateDevices":          "yes",
			"Service.CapabilityBoundingSet":   "",
			"Service.AmbientCapabilities":     "",
			"Service.RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
			"Install.WantedBy":                "multi-user.target",
		})
		if !slices.Contains(coord["Service"]["SystemCallFilter"], "@system-service") {
			t.Errorf("%s: want SystemCallFilter=@system-service", name)
		}
		if n, err := strconv.Atoi(coord.get("Service", "LimitNOFILE")); err != nil || n < 65536 {
			t.Errorf("%s: LimitNOFILE=%s, want at least 65536 (one watch connection per peer)", name, coord.get("Service", "LimitNOFILE"))
		}
		env := unitEnv(t, coord, coordFile)
		argv := execStart(t, name, coord, "", env)
		if len(argv) < 2 || argv[0] != "/usr/local/bin/meshd" || argv[1] != "coordinator" {
			t.Fatalf("%s: ExecStart %q, want /usr/local/bin/meshd coordinator ...", name, argv)
		}
		checkCLI(t, name+" ExecStart with "+coordEnvFile, argv[1:])
		fv := flagValues(argv[1:])
		if want := "/var/lib/" + coord.get("Service", "StateDirectory"); fv["data-dir"] != want {
			t.Errorf("%s: --data-dir %q, want the StateDirectory %s (the only writable path)", name, fv["data-dir"], want)
		}
		cred, src, _ := strings.Cut(coord.get("Service", "LoadCredential"), ":")
		if fv["cluster-key-file"] != "/run/credentials/"+name+"/"+cred || src != "/etc/meshd/cluster.key" {
			t.Errorf("%s: --cluster-key-file %q with LoadCredential=%s; want %%d/%s loaded from /etc/meshd/cluster.key", name, fv["cluster-key-file"], coord.get("Service", "LoadCredential"), cred)
		}
		if !strings.Contains(fv["initial-cluster"], fv["name"]+"=") {
			t.Errorf("%s: the example's --initial-cluster %q does not list its --name %q", name, fv["initial-cluster"], fv["name"])
		}
		// Defaults alone (no env file) give a working single-node command line.
		checkCLI(t, name+" ExecStart with its defaults", execStart(t, name, coord, "", unitEnv(t, coord, nil))[1:])
		checkEnvUse(t, name, coord, coordEnvFile, coordFile)
		for _, f := range flagsInText(t, coordEnvFile) {
			if !cliFlags(t, "coordinator")[f] {
				t.Errorf("%s mentions --%s, which `meshd coordinator` does not have", coordEnvFile, f)
			}
		}
	})

	t.Run("peer", func(t *testing.T) {
		name := "meshd-peer@branch1.service"
		expectKeys(t, name, peer, map[string]string{
			"Service.EnvironmentFile":         "-/etc/meshd/peer-%i.env",
			"Service.Restart":                 "always",
			"Service.StateDirectory":          "meshd/%i",
			"Service.RuntimeDirectory":        "wireguard",
			"Service.NoNewPrivileges":         "yes",
			"Service.ProtectSystem":           "strict",
			"Service.ProtectHome":             "yes",
			"Service.PrivateTmp":              "yes",
			"Service.DevicePolicy":            "closed",
			"Service.DeviceAllow":             "/dev/net/tun rw",
			"Service.CapabilityBoundingSet":   "CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE",
			"Service.AmbientCapabilities":     "CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE",
			"Service.RestrictAddressFamilies": "AF_UNIX AF_NETLINK AF_PACKET AF_INET AF_INET6",
			"Install.WantedBy":                "multi-user.target",
		})
		if !slices.Contains(peer["Service"]["SystemCallFilter"], "@system-service") {
			t.Errorf("%s: want SystemCallFilter=@system-service", name)
		}
		if d, err := time.ParseDuration(peer.get("Service", "RestartSec")); err != nil || d > 5*time.Second {
			t.Errorf("%s: RestartSec=%s, want a short delay", name, peer.get("Service", "RestartSec"))
		}
		env := unitEnv(t, peer, peerFile)
		argv := execStart(t, name, peer, "branch1", env)
		if len(argv) < 3 || argv[0] != "/usr/local/bin/meshd" || argv[1] != "peer" || argv[2] != "up" {
			t.Fatalf("%s: ExecStart %q, want /usr/local/bin/meshd peer up ...", name, argv)
		}
		checkCLI(t, name+" ExecStart with "+peerEnvFile, argv[1:])
		fv := flagValues(argv[1:])
		want := map[string]string{
			"name":       "branch1",
			"state-dir":  "/var/lib/meshd/branch1",
			"token-file": "/etc/meshd/branch1.token",
		}
		for f, v := range want {
			if fv[f] != v {
				t.Errorf("%s: --%s=%q, want %q", name, f, fv[f], v)
			}
		}
		if i := fv["interface"]; i == "" || len(i) > 15 {
			t.Errorf("%s: --interface %q: want a name of 1 to 15 characters", name, i)
		}
		if _, ok := fv["advertise-routes"]; !ok {
			t.Errorf("%s: the example env file should show a gateway (--advertise-routes)", name)
		}
		// A client: no env file at all.
		def := execStart(t, name, peer, "laptop", unitEnv(t, peer, nil))
		checkCLI(t, name+" ExecStart with its defaults", def[1:])
		if i := flagValues(def[1:])["interface"]; i != "meshd0" {
			t.Errorf("%s: default --interface %q, want meshd0", name, i)
		}
		checkEnvUse(t, name, peer, peerEnvFile, peerFile)
		for _, f := range flagsInText(t, peerEnvFile) {
			if !cliFlags(t, "peer", "up")[f] {
				t.Errorf("%s mentions --%s, which `meshd peer up` does not have", peerEnvFile, f)
			}
		}
	})

	t.Run("systemd-analyze", func(t *testing.T) {
		analyze, err := exec.LookPath("systemd-analyze")
		if err != nil {
			t.Skip("systemd-analyze is not installed (package systemd); skipping the systemd-analyze verify and security checks of the units")
		}
		dir := t.TempDir()
		units := map[string]string{
			"meshd-coordinator.service":  coordPath,
			"meshd-peer@branch1.service": peerPath,
		}
		var paths []string
		for dst, src := range units {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			// verify wants the ExecStart binary to exist.
			b = bytes.ReplaceAll(b, []byte("/usr/local/bin/meshd"), []byte(meshdBin))
			p := filepath.Join(dir, dst)
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			paths = append(paths, p)
		}
		slices.Sort(paths)
		out, err := exec.Command(analyze, append([]string{"verify", "--man=no"}, paths...)...).CombinedOutput()
		var ours []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if strings.Contains(line, dir) || strings.Contains(line, "meshd-") {
				ours = append(ours, line)
			}
		}
		if err != nil || len(ours) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}

		// The sandbox's exposure score (0 safest .. 10), offline.
		limits := map[string]float64{"meshd-coordinator.service": 2.0, "meshd-peer@branch1.service": 3.0}
		for unit, limit := range limits {
			out, err := exec.Command(analyze, "security", "--offline=true", filepath.Join(dir, unit)).CombinedOutput()
			m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindSubmatch(out)
			if m == nil {
				t.Logf("systemd-analyze security --offline=true is not available here (%v); skipping the exposure check of %s", err, unit)
				continue
			}
			score, _ := strconv.ParseFloat(string(m[1]), 64)
			t.Logf("%s: exposure %.1f", unit, score)
			if score > limit {
				t.Errorf("%s: systemd-analyze security exposure %.1f, want at most %.1f\n%s", unit, score, limit, out)
			}
		}
	})
}

// checkEnvUse: every variable the env file sets is used by the unit, and
// every variable the unit uses has a default there or in the env file.
func checkEnvUse(t *testing.T, name string, u unitFile, envPath string, file map[string]string) {
	t.Helper()
	used := map[string]bool{}
	for _, m := range anyVar.FindAllStringSubmatch(u.get("Service", "ExecStart"), -1) {
		used[m[1]] = true
	}
	defaults := unitEnv(t, u, nil)
	for k := range file {
		if !used[k] {
			t.Errorf("%s sets %s, which %s does not use", envPath, k, name)
		}
	}
	for k := range used {
		if _, ok := defaults[k]; !ok {
			t.Errorf("%s: ExecStart uses $%s without a default Environment=%s=...", name, k, k)
		}
	}
}

// TestREADME: the guide names every deployment file.
func TestREADME(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{sysDir, k8sDir} {
		files, _ := filepath.Glob(filepath.Join(dir, "*"))
		if len(files) == 0 {
			t.Errorf("no files in %s", dir)
		}
		for _, f := range files {
			if !bytes.Contains(b, []byte(filepath.Base(f))) {
				t.Errorf("README.md does not mention %s", f)
			}
		}
	}
}
