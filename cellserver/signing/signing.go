// Package signing owns request authentication between the tiers of a SET: the gateway signs
// every call it makes to a cell server, and the cell server refuses what is unsigned, forged,
// stale or replayed (docs/design.md §2, Security).
//
// A signature is HMAC-SHA256, under a key shared through a Kubernetes Secret, over
//
//	METHOD \n AUTHORITY \n REQUEST-URI \n hex(SHA-256(body)) \n timestamp \n request-id
//
// where AUTHORITY is the host:port the request is addressed to (its Host header), lower-case,
// with the scheme's default port filled in and IP addresses in their canonical text form.
// carried in three headers: X-Rp-Timestamp (unix seconds), X-Rp-Request-Id (128 random bits in
// hex) and X-Rp-Signature (hex). The timestamp bounds how long a captured request stays usable
// (the window, 30 s by default, either way to tolerate clock skew); within the window a bounded
// cache of the request IDs already seen refuses replays. A request ID is remembered only after
// its signature verified, so unsigned junk cannot fill the cache.
//
// The cache is per server process, and a cell has several servers sharing the key. What keeps
// a request captured on its way to one server from being replayed to a sibling is the
// authority in the signature: a verifier accepts only requests signed for an authority that
// names itself (the address the connection arrived at, or the names it was configured with),
// so a replay to another server is refused whether its Host is left alone (not this server)
// or rewritten (the signature no longer matches). A request therefore has one server that can
// accept it, and that server's cache sees it once: replay protection per cell without a shared
// store or a database write per request (docs/design.md §2, Security).
//
// This package must never log or return key material, and never accept a request whose
// signature it has not compared in constant time.
package signing

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redpacketset/redpacket/cellserver/routing"
)

// Header names.
const (
	HeaderTimestamp = "X-Rp-Timestamp"
	HeaderRequestID = "X-Rp-Request-Id"
	HeaderSignature = "X-Rp-Signature"
)

// MinKeyBytes is the shortest key LoadKey accepts: HMAC-SHA256 keys shorter than the hash add
// no security and usually mean a placeholder was deployed.
const MinKeyBytes = 32

// Signer signs outgoing requests. It is safe for concurrent use.
type Signer struct {
	key []byte
	now func() time.Time
}

// NewSigner returns a Signer for key. The key is copied.
func NewSigner(key []byte) *Signer {
	return &Signer{key: bytes.Clone(key), now: time.Now}
}

// Sign stamps req with a fresh timestamp and request ID and signs it for the server it is
// addressed to (req.Host, or else req.URL.Host). body must be exactly the bytes req will send
// (nil for none); Sign does not touch req.Body.
func (s *Signer) Sign(req *http.Request, body []byte) error {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return fmt.Errorf("sign %s %s: request id: %w", req.Method, req.URL.Path, err)
	}
	requestID := hex.EncodeToString(id[:])
	ts := strconv.FormatInt(s.now().Unix(), 10)
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderRequestID, requestID)
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	authority := canonicalAuthority(host, defaultPort(req.URL.Scheme == "https"))
	req.Header.Set(HeaderSignature, hex.EncodeToString(mac(s.key, req.Method, authority, req.URL.RequestURI(), body, ts, requestID)))
	return nil
}

// RoundTripper wraps next so every request through it is signed. It buffers the body to hash
// it, so it suits the small JSON bodies between tiers, not uploads.
func (s *Signer) RoundTripper(next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		var body []byte
		if req.Body != nil && req.Body != http.NoBody {
			var err error
			body, err = io.ReadAll(req.Body)
			req.Body.Close()
			if err != nil {
				return nil, fmt.Errorf("sign %s %s: read body: %w", req.Method, req.URL.Path, err)
			}
		}
		// A RoundTripper must not modify the caller's request.
		out := req.Clone(req.Context())
		out.Body = io.NopCloser(bytes.NewReader(body))
		out.ContentLength = int64(len(body))
		out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		if err := s.Sign(out, body); err != nil {
			return nil, err
		}
		return next.RoundTrip(out)
	})
}

// canonicalAuthority is the form of a host[:port] that signer and verifier compare: the
// Host header may differ from what the client was given only cosmetically (case, a default
// port left out, a zone the transport strips, another spelling of an IPv6 address).
func canonicalAuthority(hostport, defaultPort string) string {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), ""
	}
	if port == "" {
		port = defaultPort
	}
	if i := strings.IndexByte(host, '%'); i >= 0 {
		host = host[:i]
	}
	if ip := net.ParseIP(host); ip != nil {
		host = ip.String()
	} else {
		host = strings.ToLower(host)
	}
	return net.JoinHostPort(host, port)
}

func defaultPort(tls bool) string {
	if tls {
		return "443"
	}
	return "80"
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// mac computes the signature over the canonical form of a request.
func mac(key []byte, method, authority, requestURI string, body []byte, ts, requestID string) []byte {
	bodyHash := sha256.Sum256(body)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(method))
	m.Write([]byte{'\n'})
	m.Write([]byte(authority))
	m.Write([]byte{'\n'})
	m.Write([]byte(requestURI))
	m.Write([]byte{'\n'})
	m.Write([]byte(hex.EncodeToString(bodyHash[:])))
	m.Write([]byte{'\n'})
	m.Write([]byte(ts))
	m.Write([]byte{'\n'})
	m.Write([]byte(requestID))
	return m.Sum(nil)
}

// LoadKey reads a signing key from a file (a mounted Secret), trimming surrounding whitespace
// so a trailing newline from an editor or `kubectl create secret --from-file` does not change
// the key.
func LoadKey(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load signing key: %w", err)
	}
	key := bytes.TrimSpace(data)
	if len(key) < MinKeyBytes {
		// Never echo the content: it is a secret even when it is too short.
		return nil, fmt.Errorf("load signing key %s: %d bytes, need at least %d", path, len(key), MinKeyBytes)
	}
	return key, nil
}

// Error is a refused request: what went wrong and which header it concerns.
type Error struct {
	Status  int    // HTTP status to answer with
	Code    string // machine-readable code for the JSON body
	Field   string // header at fault, or ""
	Reason  string // one of the Reason* values, for metrics
	Message string
}

// Reasons a request is refused.
const (
	ReasonMissing      = "missing"
	ReasonMalformed    = "malformed"
	ReasonStale        = "stale"
	ReasonBadSignature = "bad_signature"
	ReasonReplayed     = "replayed"
	ReasonTooLarge     = "too_large"
	ReasonBusy         = "nonce_cache_full"
	ReasonWrongServer  = "wrong_server" // authentic, but signed for another server
)

// HeaderHost names the Host header in refusals about the authority a request was signed for.
const HeaderHost = "Host"

func (e *Error) Error() string {
	if e.Field == "" {
		return e.Message
	}
	return e.Field + ": " + e.Message
}

// ReasonOf is the Reason of a refusal, or "" when err is not one.
func ReasonOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

func unauthorized(field, reason, msg string) *Error {
	return &Error{Status: http.StatusUnauthorized, Code: routing.CodeUnauthorized, Field: field, Reason: reason, Message: msg}
}
