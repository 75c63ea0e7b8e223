package signing

import (
	"bytes"
	"container/heap"
	"crypto/hmac"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/redpacketset/redpacket/cellserver/routing"
)

// Defaults of a Verifier.
const (
	DefaultWindow        = 30 * time.Second
	DefaultNonceCapacity = 1 << 20 // ~40 MB at worst; a cell server sees far fewer calls per minute
	DefaultMaxBody       = 1 << 20
)

// Verifier checks signed requests. It is safe for concurrent use.
type Verifier struct {
	key     []byte
	window  time.Duration
	maxBody int64
	now     func() time.Time
	nonces  nonceCache
	exempt  map[string]bool
	reject  func(reason string)
	// authorities are the host:port names this server answers to; none means the address
	// each connection arrived at.
	authorities []string
}

// Option adjusts a Verifier.
type Option func(*Verifier)

// WithNonceCapacity bounds how many request IDs are remembered. When the cache is full of IDs
// that are all still inside the window, new requests are refused with 503 rather than
// forgetting an ID early, which would reopen the door to replays.
func WithNonceCapacity(n int) Option { return func(v *Verifier) { v.nonces.capacity = n } }

// WithMaxBody bounds the body the middleware reads to verify it.
func WithMaxBody(n int64) Option { return func(v *Verifier) { v.maxBody = n } }

// WithExempt lets requests for exactly these paths through unverified: the kubelet's probes
// (/healthz, /readyz) and Prometheus' scrape (/metrics) cannot sign. Exempt nothing that reads
// or moves money.
func WithExempt(paths ...string) Option {
	return func(v *Verifier) {
		for _, p := range paths {
			v.exempt[p] = true
		}
	}
}

// WithAuthorities names the authorities (host[:port], as the caller puts them in its URLs)
// this server answers to, and makes it answer to those only. Without it a server answers to
// the address each connection arrived at, which is how callers that address servers by IP
// (the gateway's DNS and static endpoints) reach it; a server reached under a name, or
// through a port mapping, must be given the name.
func WithAuthorities(authorities ...string) Option {
	return func(v *Verifier) { v.authorities = append(v.authorities, authorities...) }
}

// WithOnReject is called with the Reason of every refused request, for a metric.
func WithOnReject(f func(reason string)) Option { return func(v *Verifier) { v.reject = f } }

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(v *Verifier) { v.now = now } }

// NewVerifier returns a Verifier for key accepting timestamps within window of its clock, either
// way. window ≤ 0 means DefaultWindow.
func NewVerifier(key []byte, window time.Duration, opts ...Option) *Verifier {
	if window <= 0 {
		window = DefaultWindow
	}
	v := &Verifier{key: bytes.Clone(key), window: window, maxBody: DefaultMaxBody, now: time.Now, exempt: map[string]bool{}}
	v.nonces.capacity = DefaultNonceCapacity
	for _, o := range opts {
		o(v)
	}
	v.nonces.seen = make(map[[16]byte]int64)
	return v
}

// Verify checks req, whose body the caller has read into body. On success the request ID is
// remembered, so verifying the same request again fails as a replay.
func (v *Verifier) Verify(req *http.Request, body []byte) error {
	ts := req.Header.Get(HeaderTimestamp)
	requestID := req.Header.Get(HeaderRequestID)
	sig := req.Header.Get(HeaderSignature)
	switch {
	case sig == "":
		return unauthorized(HeaderSignature, ReasonMissing, "missing signature")
	case ts == "":
		return unauthorized(HeaderTimestamp, ReasonMissing, "missing timestamp")
	case requestID == "":
		return unauthorized(HeaderRequestID, ReasonMissing, "missing request id")
	}
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return unauthorized(HeaderTimestamp, ReasonMalformed, "timestamp is not unix seconds")
	}
	var nonce [16]byte
	if len(requestID) != 2*len(nonce) {
		return unauthorized(HeaderRequestID, ReasonMalformed, "request id must be 32 hex digits")
	}
	if _, err := hex.Decode(nonce[:], []byte(requestID)); err != nil {
		return unauthorized(HeaderRequestID, ReasonMalformed, "request id must be 32 hex digits")
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return unauthorized(HeaderSignature, ReasonMalformed, "signature is not hex")
	}
	now := v.now()
	sent := time.Unix(secs, 0)
	if skew := now.Sub(sent); skew > v.window || skew < -v.window {
		return unauthorized(HeaderTimestamp, ReasonStale, fmt.Sprintf("timestamp %d is outside the %s window", secs, v.window))
	}
	uri := req.RequestURI // what the client signed, byte for byte
	if uri == "" {
		uri = req.URL.RequestURI()
	}
	port := defaultPort(req.TLS != nil)
	authority := canonicalAuthority(req.Host, port)
	if !hmac.Equal(got, mac(v.key, req.Method, authority, uri, body, ts, requestID)) {
		return unauthorized(HeaderSignature, ReasonBadSignature, "signature does not match")
	}
	// Checked after the signature, so that this refusal only ever names an authentic request:
	// one replayed from a sibling server, or a caller addressing this server by a name it was
	// not told.
	if err := v.addressedHere(req, authority, port); err != nil {
		return err
	}
	// The ID must be remembered until the timestamp leaves the window (the window is inclusive,
	// hence the extra nanosecond); after that the timestamp check refuses the request on its own.
	switch v.nonces.add(nonce, sent.Add(v.window).UnixNano()+1, now.UnixNano()) {
	case nonceReplayed:
		return unauthorized(HeaderRequestID, ReasonReplayed, "request id already used: replayed request")
	case nonceFull:
		return &Error{Status: http.StatusServiceUnavailable, Code: routing.CodeUnavailable, Field: HeaderRequestID, Reason: ReasonBusy,
			Message: "too many signed requests in the replay window; retry shortly"}
	}
	return nil
}

// addressedHere checks that authority, which the request was signed for, names this server.
func (v *Verifier) addressedHere(req *http.Request, authority, port string) error {
	if len(v.authorities) > 0 {
		for _, a := range v.authorities {
			if canonicalAuthority(a, port) == authority {
				return nil
			}
		}
		return unauthorized(HeaderHost, ReasonWrongServer, fmt.Sprintf("request was signed for %s, not for this server", authority))
	}
	local, ok := req.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return unauthorized(HeaderHost, ReasonWrongServer, "this server does not know its own address; configure the authorities it answers to")
	}
	if canonicalAuthority(local.String(), port) != authority {
		return unauthorized(HeaderHost, ReasonWrongServer, fmt.Sprintf("request was signed for %s, this server is %s", authority, local))
	}
	return nil
}

// Middleware verifies every request before next sees it. The body is read (up to the size
// limit) and put back, so handlers read it as usual.
func (v *Verifier) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if v.exempt[r.URL.Path] {
			next.ServeHTTP(w, r)
			return
		}
		var body []byte
		if r.Body != nil && r.Body != http.NoBody {
			var err error
			body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, v.maxBody))
			if err != nil {
				var tooBig *http.MaxBytesError
				if errors.As(err, &tooBig) {
					v.refuse(w, &Error{Status: http.StatusRequestEntityTooLarge, Code: routing.CodeTooLarge, Reason: ReasonTooLarge,
						Message: fmt.Sprintf("body larger than %d bytes", v.maxBody)})
					return
				}
				v.refuse(w, &Error{Status: http.StatusBadRequest, Code: routing.CodeMalformedJSON, Reason: ReasonMalformed, Message: "cannot read body"})
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		if err := v.Verify(r, body); err != nil {
			var e *Error
			if !errors.As(err, &e) {
				e = unauthorized("", ReasonMalformed, err.Error())
			}
			if e.Status == http.StatusServiceUnavailable {
				w.Header().Set("Retry-After", "1")
			}
			v.refuse(w, e)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Nonces is how many request IDs are remembered now (for metrics and tests).
func (v *Verifier) Nonces() int { return v.nonces.len() }

func (v *Verifier) refuse(w http.ResponseWriter, e *Error) {
	if v.reject != nil {
		v.reject(e.Reason)
	}
	writeError(w, e)
}

func writeError(w http.ResponseWriter, e *Error) {
	routing.WriteError(w, e.Status, e.Code, e.Field, e.Message)
}

type nonceResult int

const (
	nonceAdded nonceResult = iota
	nonceReplayed
	nonceFull
)

// nonceCache remembers request IDs until their expiry. A min-heap on expiry lets each insert
// drop what has expired in O(log n) per entry, so the cache never holds more than capacity IDs
// and never forgets one early.
type nonceCache struct {
	mu       sync.Mutex
	capacity int
	seen     map[[16]byte]int64 // nonce -> expiry (unix nanos)
	byExpiry nonceHeap
}

func (c *nonceCache) add(n [16]byte, expiry, now int64) nonceResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.byExpiry) > 0 && c.byExpiry[0].expiry <= now {
		old := heap.Pop(&c.byExpiry).(nonceEntry)
		delete(c.seen, old.nonce)
	}
	if _, ok := c.seen[n]; ok {
		return nonceReplayed
	}
	if len(c.seen) >= c.capacity {
		return nonceFull
	}
	c.seen[n] = expiry
	heap.Push(&c.byExpiry, nonceEntry{nonce: n, expiry: expiry})
	return nonceAdded
}

func (c *nonceCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

type nonceEntry struct {
	nonce  [16]byte
	expiry int64
}

type nonceHeap []nonceEntry

func (h nonceHeap) Len() int           { return len(h) }
func (h nonceHeap) Less(i, j int) bool { return h[i].expiry < h[j].expiry }
func (h nonceHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *nonceHeap) Push(x any)        { *h = append(*h, x.(nonceEntry)) }
func (h *nonceHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
