// Package httpapi owns the cell server's HTTP surface: JSON under /v1 for the packet
// lifecycle, /healthz, /readyz and /metrics. It translates requests into packet service and
// queue calls and every refusal into a JSON error {"code","message","field"} with the right
// status; the codes and the body are the wire's (cellserver/routing), shared with the gateway.
// Packet IDs travel as decimal strings, because JSON numbers above 2^53 lose digits in
// JavaScript clients.
//
// It must never decide money: the packet service and the store do. It only validates shape
// (size, JSON, types), routes opens and payments through the per-packet queue, and reports.
package httpapi

import (
	"bytes"
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
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/redpacketset/redpacket/cellserver/idalloc"
	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/queue"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/store"
)

// Queue runs a packet's requests in its FIFO order; *queue.Queue is the server's.
type Queue interface {
	Open(ctx context.Context, id int64, user string) (store.OpenOutcome, error)
	Do(ctx context.Context, id int64, fn func(ctx context.Context) error) error
	RetryAfter() time.Duration
}

// Config wires the API; Service and Queue are required.
type Config struct {
	Service *packet.Service
	Queue   Queue
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
	// Routing is the table the server holds, handed to gateways (routing.PathRouting); nil
	// serves none.
	Routing func() *routing.Table
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
	v1.Handle("GET "+routing.PathRouting, a.verb("routing", a.routingTable))
	v1.Handle("GET /v1/users/{user}/sent", a.verb("sent", a.history(packet.RoleSent)))
	v1.Handle("GET /v1/users/{user}/received", a.verb("received", a.history(packet.RoleReceived)))
	v1.Handle("/v1/", a.verb("unknown", func(w http.ResponseWriter, r *http.Request) error {
		return noRoute(r)
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
	// Outside /v1 too an unknown path answers in the API's shape, not ServeMux's plain text.
	a.mux.Handle("/", a.verb("unknown", func(w http.ResponseWriter, r *http.Request) error { return noRoute(r) }))
	return a, nil
}

// ServeHTTP serves every route.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

func (a *API) readyz(w http.ResponseWriter, r *http.Request) {
	if a.cfg.Routing != nil {
		if t := a.cfg.Routing(); t != nil && t.Latest() != nil {
			w.Header().Set(routing.HeaderRoutingEpoch, strconv.FormatInt(t.Latest().Number, 10))
		}
	}
	if a.cfg.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := a.cfg.Ready(ctx); err != nil {
			routing.WriteError(w, http.StatusServiceUnavailable, routing.CodeNotReady, "", err.Error())
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// routingTable hands the table this server holds to a gateway that holds an older one.
func (a *API) routingTable(w http.ResponseWriter, r *http.Request) error {
	var after int64
	if v := r.URL.Query().Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 || strconv.FormatInt(n, 10) != v {
			return &apiError{status: http.StatusBadRequest, code: routing.CodeInvalidInput, field: "after", msg: "after must be an epoch number (0 or more, decimal)"}
		}
		after = n
	}
	var t *routing.Table
	if a.cfg.Routing != nil {
		t = a.cfg.Routing()
	}
	if t == nil || t.Latest() == nil || t.Latest().Number <= after {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	data, err := t.Marshal()
	if err != nil {
		return fmt.Errorf("encode the routing table: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(routing.HeaderRoutingEpoch, strconv.FormatInt(t.Latest().Number, 10))
	_, _ = w.Write(data)
	return nil
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
			routing.WriteError(sw, e.status, e.code, e.field, e.msg)
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
		return &apiError{status: http.StatusRequestEntityTooLarge, code: routing.CodeTooLarge, msg: fmt.Sprintf("body larger than %d bytes", tooBig.Limit)}
	case errors.As(err, &fe):
		return &apiError{status: http.StatusBadRequest, code: routing.CodeInvalidInput, msg: fe.Message, field: fe.Field}
	case errors.Is(err, packet.ErrNotFound):
		return &apiError{status: http.StatusNotFound, code: routing.CodeNotFound, msg: err.Error(), field: "id"}
	case errors.Is(err, packet.ErrWrongCell):
		return &apiError{status: http.StatusMisdirectedRequest, code: routing.CodeWrongCell, msg: err.Error(), field: "id"}
	case errors.Is(err, packet.ErrNotPaid):
		return conflict(routing.CodeNotPaid, "")
	case errors.Is(err, packet.ErrExpired):
		return conflict(routing.CodeExpired, "")
	case errors.Is(err, packet.ErrCancelled):
		return conflict(routing.CodeCancelled, "")
	case errors.Is(err, packet.ErrExhausted):
		return conflict(routing.CodeExhausted, "")
	case errors.Is(err, packet.ErrAlreadyPaid):
		return conflict(routing.CodeAlreadyPaid, "paymentTxnId")
	case errors.Is(err, packet.ErrAlreadyRefunded):
		return conflict(routing.CodeAlreadyRefunded, "")
	case errors.Is(err, packet.ErrAmountMismatch):
		return conflict(routing.CodeAmountMismatch, "amountCents")
	case errors.Is(err, packet.ErrIdempotencyClash):
		return conflict(routing.CodeIdempotencyConflict, "requestId")
	case errors.Is(err, packet.ErrPaymentReused):
		return conflict(routing.CodeIdempotencyConflict, "paymentTxnId")
	case errors.Is(err, routing.ErrKeyHandover):
		return &apiError{status: http.StatusServiceUnavailable, code: routing.CodeKeyHandover, msg: err.Error(), retryAfter: routing.KeyHandover}
	case errors.Is(err, packet.ErrKeyElsewhere):
		return &apiError{status: http.StatusMisdirectedRequest, code: routing.CodeNotHome, msg: err.Error()}
	case errors.Is(err, packet.ErrSlotUnavailable), errors.Is(err, idalloc.ErrSlotUnavailable):
		return conflict(routing.CodeSlotUnavailable, "")
	case errors.Is(err, queue.ErrOverloaded):
		return &apiError{status: http.StatusTooManyRequests, code: routing.CodeOverloaded, msg: "too many requests for this packet; retry later", retryAfter: a.cfg.Queue.RetryAfter()}
	case errors.Is(err, queue.ErrClosed):
		return &apiError{status: http.StatusServiceUnavailable, code: routing.CodeShuttingDown, msg: "server is draining", retryAfter: time.Second}
	case errors.Is(err, idalloc.ErrNoSlot), errors.Is(err, idalloc.ErrNotIssuing), errors.Is(err, idalloc.ErrExhausted):
		return &apiError{status: http.StatusServiceUnavailable, code: routing.CodeUnavailable, msg: err.Error(), retryAfter: time.Second}
	case dbUnavailable(err), errors.Is(err, store.ErrUnreadable):
		return &apiError{status: http.StatusServiceUnavailable, code: routing.CodeDBUnavailable, msg: "the cell database is unavailable; retry (every call is idempotent)", retryAfter: time.Second}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return &apiError{status: http.StatusServiceUnavailable, code: routing.CodeTimeout, msg: "request timed out", retryAfter: time.Second}
	}
	return &apiError{status: http.StatusInternalServerError, code: routing.CodeInternal, msg: "internal error"}
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

// decode reads exactly one JSON object into v, a pointer to a struct whose json names are the
// only keys accepted, each at most once and spelled exactly. encoding/json alone folds case
// ("TotalCents" fills totalCents), keeps the last of duplicate keys and takes null for an
// object: each would let one body mean one thing to a client, a proxy or the gateway reading
// it and another to the cell that moves the money.
func decode(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return err
		}
		return &apiError{status: http.StatusBadRequest, code: routing.CodeMalformedJSON, msg: "cannot read body"}
	}
	if err := checkObject(body, jsonNames(reflect.TypeOf(v).Elem())); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return &apiError{status: http.StatusBadRequest, code: routing.CodeInvalidInput, field: typeErr.Field,
				msg: fmt.Sprintf("%s must be a %s that fits", typeErr.Field, typeErr.Type)}
		}
		return &apiError{status: http.StatusBadRequest, code: routing.CodeMalformedJSON, msg: err.Error()}
	}
	return nil
}

func malformed(msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: routing.CodeMalformedJSON, msg: msg}
}

// checkObject accepts body when it is one JSON object, and nothing after it, whose keys are
// all in names and none repeated.
func checkObject(body []byte, names map[string]bool) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return malformed("body must be a JSON object")
	}
	seen := make(map[string]bool, len(names))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return malformed("body is not a JSON object")
		}
		key, _ := tok.(string)
		switch {
		case !names[key]:
			msg := "unknown field"
			for n := range names {
				if strings.EqualFold(n, key) {
					msg = fmt.Sprintf("unknown field (names are case-sensitive: %s)", n)
				}
			}
			return &apiError{status: http.StatusBadRequest, code: routing.CodeInvalidInput, field: key, msg: msg}
		case seen[key]:
			return &apiError{status: http.StatusBadRequest, code: routing.CodeInvalidInput, field: key, msg: "field given more than once"}
		}
		seen[key] = true
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return malformed("body is not a JSON object")
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return malformed("body is not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return malformed("body has data after the JSON object")
	}
	return nil
}

// jsonNames are the keys encoding/json writes for struct type t, memoised per type. Request
// bodies are flat structs, so embedded and nested fields need no handling here.
func jsonNames(t reflect.Type) map[string]bool {
	if m, ok := jsonNameCache.Load(t); ok {
		return m.(map[string]bool)
	}
	m := map[string]bool{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		m[name] = true
	}
	jsonNameCache.Store(t, m)
	return m
}

var jsonNameCache sync.Map // reflect.Type -> map[string]bool

func noRoute(r *http.Request) error {
	return &apiError{status: http.StatusNotFound, code: routing.CodeNoRoute, msg: r.Method + " " + r.URL.Path + " is not a route"}
}

func pathID(r *http.Request) (int64, error) {
	id, err := routing.ParsePacketID(r.PathValue("id"))
	if err != nil {
		return 0, &apiError{status: http.StatusBadRequest, code: routing.CodeInvalidInput, field: "id", msg: "packet id must be a positive decimal integer"}
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
		return 0, &apiError{status: http.StatusBadRequest, code: routing.CodeInvalidInput, field: "limit", msg: fmt.Sprintf("limit must be 1..%d", a.cfg.MaxLimit)}
	}
	return n, nil
}
