// Package metrics holds what coordinators and agents share to expose
// Prometheus metrics: the name prefix, a registry with the Go runtime and
// process collectors, the /metrics handler, the plain-HTTP listener that
// --metrics-listen opens, the list of the metric names a set of collectors
// describes (which the Grafana dashboard is checked against), and a decoder
// of scrapes for tests and benchmarks.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Namespace prefixes every meshd metric: meshd_coordinator_... and
// meshd_agent_....
const Namespace = "meshd"

// Path is where metrics are served.
const Path = "/metrics"

// NewRegistry returns a registry holding the Go runtime and process
// collectors (process_cpu_seconds_total, process_resident_memory_bytes,
// go_goroutines, ...), to which each side adds its own.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(Runtime()...)
	return reg
}

// Handler serves what g gathers in the Prometheus text format. A collector
// that fails leaves its families out; the others are still served.
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, MaxRequestsInFlight: 4})
}

// Serve answers GET /metrics from g on ln, in plain HTTP and without
// authentication (the --metrics-listen listener for scrapers), until ctx is
// done; it then closes ln. Any other path is 404.
func Serve(ctx context.Context, ln net.Listener, g prometheus.Gatherer) error {
	mux := http.NewServeMux()
	mux.Handle("GET "+Path, Handler(g))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10}
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("serve metrics on %s: %w", ln.Addr(), err)
		}
	})
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	srv.Close()
	wg.Wait()
	return err
}

// Listen opens the --metrics-listen address (host:port; a port alone
// listens on every address).
func Listen(addr string) (net.Listener, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("--metrics-listen %q is not HOST:PORT (for example 127.0.0.1:9090 or :9090)", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	return ln, nil
}

// fqName finds a descriptor's name in its String form
// (Desc{fqName: "meshd_...", ...}), which is the only way the client
// library shows it.
var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// Names lists the metric names cs describe, sorted. A histogram is listed
// once under its base name (its series are NAME_bucket, NAME_sum and
// NAME_count), a counter under its name with _total.
func Names(cs ...prometheus.Collector) []string {
	ch := make(chan *prometheus.Desc)
	var out []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range ch {
			if m := fqName.FindStringSubmatch(d.String()); m != nil {
				out = append(out, m[1])
			}
		}
	}()
	for _, c := range cs {
		c.Describe(ch)
	}
	close(ch)
	<-done
	slices.Sort(out)
	return slices.Compact(out)
}

// Runtime are the Go runtime and process collectors NewRegistry adds, for
// Names.
func Runtime() []prometheus.Collector {
	return []prometheus.Collector{collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})}
}

// Families is a decoded scrape: metric families by name.
type Families map[string]*dto.MetricFamily

// Parse decodes a scrape in the Prometheus text format.
func Parse(r io.Reader) (Families, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("decode metrics: %w", err)
	}
	return Families(fams), nil
}

// Series lists the series of family name whose labels include every
// pair of labels (name, value, name, value, ...).
func (f Families) Series(name string, labels ...string) []*dto.Metric {
	fam, ok := f[name]
	if !ok {
		return nil
	}
	var out []*dto.Metric
	for _, m := range fam.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				match = false
				break
			}
		}
		if match {
			out = append(out, m)
		}
	}
	return out
}

// Sum adds up the values of the series Series picks: a counter's or a
// gauge's value, a histogram's number of observations.
func (f Families) Sum(name string, labels ...string) float64 {
	var sum float64
	for _, m := range f.Series(name, labels...) {
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			sum += m.Untyped.GetValue()
		}
	}
	return sum
}
