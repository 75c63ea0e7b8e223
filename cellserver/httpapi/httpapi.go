// Package httpapi owns the cell server's HTTP surface: JSON under /v1 for the packet
// lifecycle, /healthz, /readyz and /metrics. It translates requests into packet service and
// queue calls and every refusal into a JSON error {"code","message","field"} with the right
// status. Packet IDs travel as decimal strings, because JSON numbers above 2^53 lose digits
// in JavaScript clients.
//
// It must never decide money: the packet service and the store do. It only validates shape
// (size, JSON, types), routes opens and payments through the per-packet queue, and reports.
package httpapi

import (
	"context"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/queue"
	"github.com/redpacketset/redpacket/cellserver/routing"
)

// SlotHeader asks wrap for a packet ID in a given slot (the gateway uses it to place a
// packet in a cell's slot range).
const SlotHeader = "X-Redpacket-Slot"

// Config wires the API; Service and Queue are required.
type Config struct {
	Service *packet.Service
	Queue   *queue.Queue
	// MaxBody bounds a request body; default 16 KiB, far above any valid request.
	MaxBody int64
	// Ready reports whether the server should take traffic (DB reachable, IDs issuable, not
	// draining); nil means always ready.
	Ready func(ctx context.Context) error
	// V1Middleware wraps the /v1 routes (request signing); nil for none.
	V1Middleware func(http.Handler) http.Handler
	Registerer   prometheus.Registerer
	Gatherer     prometheus.Gatherer // served on /metrics; nil serves none
	Log          *slog.Logger
	// DefaultLimit and MaxLimit bound page sizes (defaults 20 and 100).
	DefaultLimit, MaxLimit int
}

// API is the HTTP handler set.
type API struct {
	cfg      Config
	mux      *http.ServeMux
	latency  *prometheus.HistogramVec
	failures *prometheus.CounterVec
}

// New builds the handler and registers its metrics.
func New(cfg Config) (*API, error) {
	if cfg.Service == nil || cfg.Queue == nil {
		return nil, errors.New("httpapi: Service and Queue are required")
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 16 << 10
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.DefaultLimit <= 0 {
		cfg.DefaultLimit = 20
	}
	if cfg.MaxLimit <= 0 {
		cfg.MaxLimit = 100
	}
	a := &API{cfg: cfg, mux: http.NewServeMux(),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "redpacket_http_request_duration_seconds",
			Help:    "Latency of /v1 requests per verb and status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"verb", "code"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "redpacket_http_errors_total",
			Help: "Error answers per verb and error code.",
		}, []string{"verb", "code"}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{a.latency, a.failures} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("httpapi: register metrics: %w", err)
			}
		}
	}
	v1 := http.NewServeMux()
	v1.Handle("POST /v1/packets", a.verb("wrap", a.wrap))
	v1.Handle("POST /v1/packets/{id}/pay", a.verb("pay", a.pay))
	v1.Handle("POST /v1/packets/{id}/grab", a.verb("grab", a.grab))
	v1.Handle("POST /v1/packets/{id}/open", a.verb("open", a.open))
	v1.Handle("GET /v1/packets/{id}", a.verb("details", a.details))
	v1.Handle("POST "+routing.PathFindWrap, a.verb("find_wrap", a.findWrap))
	v1.Handle("POST "+routing.PathPaymentClaims, a.verb("claim_payment", a.claimPayment))
	v1.Handle("POST "+routing.PathFindPaymentClaim, a.verb("find_payment_claim", a.findPaymentClaim))
	v1.Handle("GET /v1/users/{user}/sent", a.verb("sent", a.history(packet.RoleSent)))
	v1.Handle("GET /v1/users/{user}/received", a.verb("received", a.history(packet.RoleReceived)))
	v1.Handle("/v1/", a.verb("unknown", func(w http.ResponseWriter, r *http.Request) error {
		return &apiError{status: http.StatusNotFound, code: "no_route", msg: r.Method + " " + r.URL.Path + " is not a route"}
	}))
	var h http.Handler = v1
	if cfg.V1Middleware != nil {
		h = cfg.V1Middleware(h)
	}
	a.mux.Handle("/v1/", h)
	a.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	a.mux.HandleFunc("GET /readyz", a.readyz)
	if cfg.Gatherer != nil {
		a.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	return a, nil
}

// ServeHTTP serves every route.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

func (a *API) readyz(w http.ResponseWriter, r *http.Request) {
	if a.cfg.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := a.cfg.Ready(ctx); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, errorBody{Code: "not_ready", Message: err.Error()})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// apiError is an answer that is not a 2xx.
type apiError struct {
	status     int
	code       string
	msg        string
	field      string
	retryAfter time.Duration
}

func (e *apiError) Error() string { return e.code + ": " + e.msg }

type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

// verb wraps a handler with the body limit, error translation and metrics.
func (a *API) verb(name string, h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		r.Body = http.MaxBytesReader(sw, r.Body, a.cfg.MaxBody)
		if err := h(sw, r); err != nil {
			e := a.translate(err)
			if e.status >= 500 {
				a.cfg.Log.Error("request failed", "verb", name, "path", r.URL.Path, "err", err)
			}
			if e.retryAfter > 0 {
				sw.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(e.retryAfter.Seconds()))))
			}
			a.failures.WithLabelValues(name, e.code).Inc()
			writeJSON(sw, e.status, errorBody{Code: e.code, Message: e.msg, Field: e.field})
		}
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		a.latency.WithLabelValues(name, strconv.Itoa(sw.status)).Observe(time.Since(start).Seconds())
	})
}

// translate maps every error the service and queue return to an answer.
func (a *API) translate(err error) *apiError {
	var ae *apiError
	var fe *packet.FieldError
	var tooBig *http.MaxBytesError
	conflict := func(code, field string) *apiError {
		return &apiError{status: http.StatusConflict, code: code, msg: err.Error(), field: field}
	}
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &tooBig):
		return &apiError{status: http.StatusRequestEntityTooLarge, code: "too_large", msg: fmt.Sprintf("body larger than %d bytes", tooBig.Limit)}
	case errors.As(err, &fe):
		return &apiError{status: http.StatusBadRequest, code: "invalid_input", msg: fe.Message, field: fe.Field}
	case errors.Is(err, packet.ErrNotFound):
		return &apiError{status: http.StatusNotFound, code: "not_found", msg: err.Error(), field: "id"}
	case errors.Is(err, packet.ErrWrongCell):
		return &apiError{status: http.StatusMisdirectedRequest, code: "wrong_cell", msg: err.Error(), field: "id"}
	case errors.Is(err, packet.ErrNotPaid):
		return conflict("not_paid", "")
	case errors.Is(err, packet.ErrExpired):
		return conflict("expired", "")
	case errors.Is(err, packet.ErrCancelled):
		return conflict("cancelled", "")
	case errors.Is(err, packet.ErrExhausted):
		return conflict("exhausted", "")
	case errors.Is(err, packet.ErrAlreadyPaid):
		return conflict("already_paid", "paymentTxnId")
	case errors.Is(err, packet.ErrAlreadyRefunded):
		return conflict("already_refunded", "")
	case errors.Is(err, packet.ErrAmountMismatch):
		return conflict("amount_mismatch", "amountCents")
	case errors.Is(err, packet.ErrIdempotencyClash):
		return conflict("idempotency_conflict", "requestId")
	case errors.Is(err, packet.ErrPaymentReused):
		return conflict("idempotency_conflict", "paymentTxnId")
	case errors.Is(err, routing.ErrKeyHandover):
		return &apiError{status: http.StatusServiceUnavailable, code: routing.CodeKeyHandover, msg: err.Error(), retryAfter: routing.KeyHandover}
	case errors.Is(err, packet.ErrKeyElsewhere):
		return &apiError{status: http.StatusMisdirectedRequest, code: routing.CodeNotHome, msg: err.Error()}
	case errors.Is(err, packet.ErrSlotUnavailable), errors.Is(err, ids.ErrSlotUnavailable):
		return conflict("slot_unavailable", "")
	case errors.Is(err, queue.ErrOverloaded):
		return &apiError{status: http.StatusTooManyRequests, code: "overloaded", msg: "too many requests for this packet; retry later", retryAfter: a.cfg.Queue.RetryAfter()}
	case errors.Is(err, queue.ErrClosed):
		return &apiError{status: http.StatusServiceUnavailable, code: "shutting_down", msg: "server is draining", retryAfter: time.Second}
	case errors.Is(err, ids.ErrNoSlot), errors.Is(err, ids.ErrNotIssuing), errors.Is(err, ids.ErrExhausted):
		return &apiError{status: http.StatusServiceUnavailable, code: "unavailable", msg: err.Error(), retryAfter: time.Second}
	case dbUnavailable(err):
		return &apiError{status: http.StatusServiceUnavailable, code: "db_unavailable", msg: "the cell database is unavailable; retry (every call is idempotent)", retryAfter: time.Second}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return &apiError{status: http.StatusServiceUnavailable, code: "timeout", msg: "request timed out", retryAfter: time.Second}
	}
	return &apiError{status: http.StatusInternalServerError, code: "internal", msg: "internal error"}
}

// dbUnavailable recognises failures that say "try again later" rather than "bug": the
// database unreachable or restarting, or a lock wait that timed out under contention.
func dbUnavailable(err error) bool {
	var netErr net.Error
	var myErr *mysql.MySQLError
	switch {
	case errors.Is(err, driver.ErrBadConn), errors.Is(err, mysql.ErrInvalidConn), errors.As(err, &netErr),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	case errors.As(err, &myErr):
		// 1205 lock wait timeout, 1213 deadlock, 1040 too many connections,
		// 1053 server shutdown, 2006/2013 server gone / lost connection.
		switch myErr.Number {
		case 1205, 1213, 1040, 1053, 2006, 2013:
			return true
		}
	}
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decode reads exactly one JSON object with known fields into v.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		var typeErr *json.UnmarshalTypeError
		var syntax *json.SyntaxError
		switch {
		case errors.As(err, &tooBig):
			return err
		case errors.As(err, &typeErr) && typeErr.Field == "":
			return &apiError{status: http.StatusBadRequest, code: "malformed_json", msg: "body must be a JSON object"}
		case errors.As(err, &typeErr):
			return &apiError{status: http.StatusBadRequest, code: "invalid_input", field: typeErr.Field,
				msg: fmt.Sprintf("%s must be a %s that fits", typeErr.Field, typeErr.Type)}
		case errors.As(err, &syntax), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
			return &apiError{status: http.StatusBadRequest, code: "malformed_json", msg: "body is not a JSON object"}
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
			return &apiError{status: http.StatusBadRequest, code: "invalid_input", field: field, msg: "unknown field"}
		}
		return &apiError{status: http.StatusBadRequest, code: "malformed_json", msg: err.Error()}
	}
	if dec.More() {
		return &apiError{status: http.StatusBadRequest, code: "malformed_json", msg: "body has data after the JSON object"}
	}
	return nil
}

func pathID(r *http.Request) (int64, error) {
	v := r.PathValue("id")
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id <= 0 {
		return 0, &apiError{status: http.StatusBadRequest, code: "invalid_input", field: "id", msg: "packet id must be a positive decimal integer"}
	}
	return id, nil
}

func (a *API) limit(r *http.Request) (int, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return a.cfg.DefaultLimit, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > a.cfg.MaxLimit {
		return 0, &apiError{status: http.StatusBadRequest, code: "invalid_input", field: "limit", msg: fmt.Sprintf("limit must be 1..%d", a.cfg.MaxLimit)}
	}
	return n, nil
}
