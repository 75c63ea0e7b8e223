package gateway

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/routing"
)

// metrics are the gateway's Prometheus series. They are created per Gateway, so tests can run
// several gateways in one process; a nil Registerer keeps them unregistered.
type metrics struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	upstream      *prometheus.HistogramVec
	createRetries prometheus.Counter
	keyLookups    *prometheus.CounterVec
	failovers     *prometheus.CounterVec
	readyServers  *prometheus.GaugeVec
	knownServers  *prometheus.GaugeVec
	cellServing   *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer, g *Gateway) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rp_gateway_requests_total",
			Help: "Requests answered by the gateway, by verb and HTTP status.",
		}, []string{"verb", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "rp_gateway_request_duration_seconds",
			Help:    "Time to answer a request, retries and fan-out included, by verb.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"verb"}),
		upstream: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "rp_gateway_upstream_duration_seconds",
			Help:    "Latency of one call to a cell server, by verb and cell.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"verb", "cell"}),
		createRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rp_gateway_create_slot_retries_total",
			Help: "Creates retried with another slot after a cell refused the first (slot_unavailable).",
		}),
		keyLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rp_gateway_key_lookups_total",
			Help: "Idempotency keys looked up in an earlier home cell before their current home may accept them, by kind (wrap, payment) and result (found, absent, failed).",
		}, []string{"kind", "result"}),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rp_gateway_server_failovers_total",
			Help: "Calls moved to another server of the cell because the chosen one refused the connection.",
		}, []string{"cell"}),
		readyServers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rp_gateway_ready_servers",
			Help: "Servers of a cell that answered their last readiness probe.",
		}, []string{"cell"}),
		knownServers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rp_gateway_known_servers",
			Help: "Servers of a cell found by the resolver, ready or not.",
		}, []string{"cell"}),
		cellServing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rp_gateway_cell_serving",
			Help: "1 while a cell has a ready server, so its packets are routed; 0 while its requests get 503 cell_unavailable. The gateway stays ready while any cell serves.",
		}, []string{"cell"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.upstream, m.createRetries, m.keyLookups, m.failovers, m.readyServers, m.knownServers, m.cellServing,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "rp_gateway_routing_epoch",
				Help: "Number of the newest epoch in the loaded routing table.",
			}, func() float64 {
				if t := g.cfg.Routing.Current(); t != nil && t.Latest() != nil {
					return float64(t.Latest().Number)
				}
				return 0
			}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "rp_gateway_routing_file_refused",
				Help: "1 while the routing file's current content is refused and the last good table is in force.",
			}, func() float64 {
				if f, ok := g.cfg.Routing.(interface{ Failing() bool }); ok && f.Failing() {
					return 1
				}
				return 0
			}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "rp_gateway_routing_epoch_in_force",
				Help: "Number of the routing epoch in force now.",
			}, func() float64 {
				if t := g.cfg.Routing.Current(); t != nil {
					if e, ok := t.EpochAt(g.cfg.Now()); ok {
						return float64(e.Number)
					}
				}
				return 0
			}),
		)
	}
	return m
}

func (m *metrics) observeCell(cell string, ready, total int) {
	m.readyServers.WithLabelValues(cell).Set(float64(ready))
	m.knownServers.WithLabelValues(cell).Set(float64(total))
	serving := 0.0
	if ready > 0 {
		serving = 1
	}
	m.cellServing.WithLabelValues(cell).Set(serving)
}

// instrument counts and times h under verb, and refuses other methods than method ("" = any)
// with the JSON error shape rather than ServeMux's plain text.
func (g *Gateway) instrument(verb, method string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		if method != "" && r.Method != method {
			rec.Header().Set("Allow", method)
			writeError(rec, http.StatusMethodNotAllowed, routing.CodeMethodNotAllowed, "", r.Method+" not allowed here; use "+method)
		} else {
			h(rec, r)
		}
		g.metrics.requests.WithLabelValues(verb, strconv.Itoa(rec.status)).Inc()
		g.metrics.duration.WithLabelValues(verb).Observe(time.Since(start).Seconds())
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wroteHeader {
		s.status, s.wroteHeader = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.wroteHeader = true
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.MaxBytesReader and ResponseController reach the real writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
