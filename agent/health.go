package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/tools/cache"
)

// serve runs an HTTP server on addr until ctx ends.
func serve(ctx context.Context, what, addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s on %s: %w", what, addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	slog.Info("serving", "what", what, "addr", ln.Addr().String())
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("http server", "what", what, "err", err)
		}
	}()
	return nil
}

// metricsHandler serves /metrics (and /healthz, as kube-proxy's metrics
// port does).
func (a *Agent) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.met.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", a.healthz)
	return mux
}

// healthHandler serves /healthz and /readyz.
func (a *Agent) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", a.healthz)
	mux.HandleFunc("/readyz", a.readyz)
	return mux
}

// healthStatus is the body of /healthz and /readyz.
type healthStatus struct {
	Phase        string    `json:"phase"`
	LastSync     time.Time `json:"lastSync,omitzero"`
	PendingSince time.Time `json:"pendingSince,omitzero"`
	LastError    string    `json:"lastError,omitempty"`
}

func (a *Agent) status() (healthStatus, bool, bool) {
	st := healthStatus{Phase: a.phase()}
	if a.proxy == nil {
		return st, true, false
	}
	synced, pending, last, err := a.proxy.status()
	st.LastSync, st.PendingSince = last, pending
	if err != nil {
		st.LastError = err.Error()
	}
	// Healthy while changes get programmed: nothing waits, or what waits
	// has waited less than the timeout (kube-proxy's rule).
	healthy := pending.IsZero() || time.Since(pending) < a.cfg.HealthzTimeout
	return st, healthy, synced && st.Phase == phaseRunning
}

// healthz: 200 while the agent keeps the datapath in step with the API.
func (a *Agent) healthz(w http.ResponseWriter, _ *http.Request) {
	st, healthy, _ := a.status()
	writeJSON(w, healthy, st)
}

// readyz: 200 once the datapath is loaded, the CNI plugin installed and
// the first sync done.
func (a *Agent) readyz(w http.ResponseWriter, _ *http.Request) {
	st, _, ready := a.status()
	writeJSON(w, ready, st)
}

func writeJSON(w http.ResponseWriter, ok bool, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if ok {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(v)
}

// healthCheck is what one health check node port reports.
type healthCheck struct {
	service string
	local   int // ready, not terminating endpoints on this node
}

// healthChecks serves the healthCheckNodePort of every
// externalTrafficPolicy Local Service, as kube-proxy does: 200 with the
// number of local endpoints, 503 when there are none, so an external load
// balancer sends traffic only to nodes that have endpoints.
type healthChecks struct {
	ctx  context.Context
	addr string // host part; "" means every address

	mu      sync.Mutex
	servers map[int32]*hcServer
}

type hcServer struct {
	srv *http.Server
	mu  sync.Mutex
	hc  healthCheck
}

func newHealthChecks(ctx context.Context, addr string) *healthChecks {
	return &healthChecks{ctx: ctx, addr: addr, servers: map[int32]*hcServer{}}
}

// update opens a server for every port in want and closes the others.
func (h *healthChecks) update(want map[int32]healthCheck) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, s := range h.servers {
		if _, keep := want[port]; !keep {
			s.srv.Close()
			delete(h.servers, port)
		}
	}
	for port, hc := range want {
		if s, ok := h.servers[port]; ok {
			s.mu.Lock()
			s.hc = hc
			s.mu.Unlock()
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(h.addr, strconv.Itoa(int(port))))
		if err != nil {
			slog.Error("health check node port", "service", hc.service, "port", port, "err", err)
			continue
		}
		s := &hcServer{hc: hc}
		s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
		go s.srv.Serve(ln)
		h.servers[port] = s
	}
}

func (h *healthChecks) close() {
	h.update(nil)
}

func (s *hcServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	hc := s.hc
	s.mu.Unlock()
	ns, name, _ := cache.SplitMetaNamespaceKey(hc.service)
	body := struct {
		Service struct {
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
		} `json:"service"`
		LocalEndpoints      int  `json:"localEndpoints"`
		ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
	}{LocalEndpoints: hc.local, ServiceProxyHealthy: true}
	body.Service.Namespace, body.Service.Name = ns, name
	writeJSON(w, hc.local > 0, body)
}
