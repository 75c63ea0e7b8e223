package signing

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

// fakeClock is a settable clock shared by signer and verifier.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// echo answers 200 with the body it read, proving the middleware restored it.
var echo = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	_, _ = w.Write(b)
})

func newPair(t *testing.T, opts ...Option) (*Signer, *fakeClock, *httptest.Server, *Verifier) {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 2, 17, 12, 0, 0, 0, time.UTC)}
	s := NewSigner(testKey)
	s.now = clock.now
	v := NewVerifier(testKey, 30*time.Second, append([]Option{WithClock(clock.now)}, opts...)...)
	srv := httptest.NewServer(v.Middleware(echo))
	t.Cleanup(srv.Close)
	return s, clock, srv, v
}

type refusal struct {
	Code, Message, Field string
}

func send(t *testing.T, req *http.Request) (int, string, refusal) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r refusal
	if resp.StatusCode != http.StatusOK {
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatalf("refusal body is not JSON: %q", body)
		}
	}
	return resp.StatusCode, string(body), r
}

func signed(t *testing.T, s *Signer, method, url string, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Sign(req, body); err != nil {
		t.Fatal(err)
	}
	return req
}

func TestGoodRequestPassesAndBodyIsRestored(t *testing.T) {
	s, _, srv, _ := newPair(t)
	body := []byte(`{"userId":"u1"}`)
	code, got, _ := send(t, signed(t, s, "POST", srv.URL+"/v1/packets/123000/open?x=1&y=2", body))
	if code != http.StatusOK || got != string(body) {
		t.Fatalf("good request: %d %q", code, got)
	}
	code, _, _ = send(t, signed(t, s, "GET", srv.URL+"/v1/packets/123000", nil))
	if code != http.StatusOK {
		t.Fatalf("good GET without body: %d", code)
	}
}

func TestTamperedRequestsFail(t *testing.T) {
	s, _, srv, _ := newPair(t)
	body := []byte(`{"amount":100}`)
	cases := map[string]struct {
		tamper func(r *http.Request) *http.Request
		field  string
	}{
		"method": {func(r *http.Request) *http.Request { r.Method = "PUT"; return r }, HeaderSignature},
		"path": {func(r *http.Request) *http.Request {
			r.URL.Path = "/v1/packets/999000/open"
			return r
		}, HeaderSignature},
		"query": {func(r *http.Request) *http.Request { r.URL.RawQuery = "limit=1000"; return r }, HeaderSignature},
		"body": {func(r *http.Request) *http.Request {
			b := []byte(`{"amount":999}`)
			r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
			return r
		}, HeaderSignature},
		"timestamp": {func(r *http.Request) *http.Request {
			ts := r.Header.Get(HeaderTimestamp)
			r.Header.Set(HeaderTimestamp, ts[:len(ts)-1]+string('0'+(ts[len(ts)-1]-'0'+1)%10))
			return r
		}, HeaderSignature},
		"request id": {func(r *http.Request) *http.Request {
			r.Header.Set(HeaderRequestID, strings.Repeat("ab", 16))
			return r
		}, HeaderSignature},
		"signature": {func(r *http.Request) *http.Request { r.Header.Set(HeaderSignature, strings.Repeat("00", 32)); return r }, HeaderSignature},
		"wrong key": {func(r *http.Request) *http.Request {
			other := NewSigner([]byte(strings.Repeat("k", 32)))
			other.now = s.now
			if err := other.Sign(r, body); err != nil {
				t.Fatal(err)
			}
			return r
		}, HeaderSignature},
		"no signature":      {func(r *http.Request) *http.Request { r.Header.Del(HeaderSignature); return r }, HeaderSignature},
		"no timestamp":      {func(r *http.Request) *http.Request { r.Header.Del(HeaderTimestamp); return r }, HeaderTimestamp},
		"no request id":     {func(r *http.Request) *http.Request { r.Header.Del(HeaderRequestID); return r }, HeaderRequestID},
		"bad request id":    {func(r *http.Request) *http.Request { r.Header.Set(HeaderRequestID, "xyz"); return r }, HeaderRequestID},
		"bad timestamp":     {func(r *http.Request) *http.Request { r.Header.Set(HeaderTimestamp, "soon"); return r }, HeaderTimestamp},
		"signature not hex": {func(r *http.Request) *http.Request { r.Header.Set(HeaderSignature, "zz"); return r }, HeaderSignature},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			req := c.tamper(signed(t, s, "POST", srv.URL+"/v1/packets/123000/open?limit=10", body))
			code, _, r := send(t, req)
			if code != http.StatusUnauthorized || r.Code != "unauthorized" || r.Field != c.field || r.Message == "" {
				t.Fatalf("tampered %s: %d %+v, want 401 unauthorized on %s", name, code, r, c.field)
			}
		})
	}
}

func TestStaleRequestsFailBothWays(t *testing.T) {
	s, clock, srv, _ := newPair(t)
	// Signed now, delivered 31 s later.
	req := signed(t, s, "POST", srv.URL+"/v1/packets/1000/pay", []byte("{}"))
	clock.advance(31 * time.Second)
	if code, _, r := send(t, req); code != http.StatusUnauthorized || r.Field != HeaderTimestamp {
		t.Fatalf("late request: %d %+v", code, r)
	}
	// Signed by a clock 31 s ahead of the verifier's.
	future := signed(t, s, "POST", srv.URL+"/v1/packets/1000/pay", []byte("{}"))
	clock.advance(-62 * time.Second)
	if code, _, r := send(t, future); code != http.StatusUnauthorized || r.Field != HeaderTimestamp {
		t.Fatalf("early request: %d %+v", code, r)
	}
	// Exactly at the edge of the window is still accepted.
	edge := signed(t, s, "POST", srv.URL+"/v1/packets/1000/pay", []byte("{}"))
	clock.advance(30 * time.Second)
	if code, _, r := send(t, edge); code != http.StatusOK {
		t.Fatalf("request at the window edge: %d %+v", code, r)
	}
}

func TestReplayFails(t *testing.T) {
	s, clock, srv, _ := newPair(t)
	body := []byte(`{"userId":"u1"}`)
	req := signed(t, s, "POST", srv.URL+"/v1/packets/5000/open", body)
	replay := req.Clone(req.Context())
	replay.Body = io.NopCloser(bytes.NewReader(body))
	if code, _, _ := send(t, req); code != http.StatusOK {
		t.Fatalf("first delivery: %d", code)
	}
	if code, _, r := send(t, replay); code != http.StatusUnauthorized || r.Field != HeaderRequestID {
		t.Fatalf("replay: %d %+v", code, r)
	}
	// At the last accepted instant the ID is still remembered...
	clock.advance(30 * time.Second)
	replay2 := req.Clone(req.Context())
	replay2.Body = io.NopCloser(bytes.NewReader(body))
	if code, _, r := send(t, replay2); code != http.StatusUnauthorized || r.Field != HeaderRequestID {
		t.Fatalf("replay at window edge: %d %+v", code, r)
	}
	// ...and after it the timestamp refuses it.
	clock.advance(time.Nanosecond)
	replay3 := req.Clone(req.Context())
	replay3.Body = io.NopCloser(bytes.NewReader(body))
	if code, _, r := send(t, replay3); code != http.StatusUnauthorized || r.Field != HeaderTimestamp {
		t.Fatalf("replay after window: %d %+v", code, r)
	}
}

func TestNonceCacheStaysBounded(t *testing.T) {
	s, clock, srv, v := newPair(t, WithNonceCapacity(50))
	for i := range 50 {
		if code, _, r := send(t, signed(t, s, "GET", srv.URL+fmt.Sprintf("/v1/packets/%d", i), nil)); code != http.StatusOK {
			t.Fatalf("request %d: %d %+v", i, code, r)
		}
	}
	// Full of live IDs: refuse rather than forget one early.
	resp, err := http.DefaultClient.Do(signed(t, s, "GET", srv.URL+"/v1/packets/x", nil))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("full cache answered %d", resp.StatusCode)
	}
	if v.Nonces() != 50 {
		t.Fatalf("cache holds %d, capacity 50", v.Nonces())
	}
	// Once the window passes, old IDs expire and room comes back; the size never passes capacity.
	for round := range 5 {
		clock.advance(31 * time.Second)
		for i := range 50 {
			if code, _, r := send(t, signed(t, s, "GET", srv.URL+fmt.Sprintf("/v1/packets/%d/%d", round, i), nil)); code != http.StatusOK {
				t.Fatalf("round %d request %d: %d %+v", round, i, code, r)
			}
			if n := v.Nonces(); n > 50 {
				t.Fatalf("cache grew to %d", n)
			}
		}
	}
}

func TestBodyLimit(t *testing.T) {
	s, _, srv, _ := newPair(t, WithMaxBody(16))
	code, _, r := send(t, signed(t, s, "POST", srv.URL+"/v1/packets", bytes.Repeat([]byte("x"), 17)))
	if code != http.StatusRequestEntityTooLarge || r.Code != "too_large" {
		t.Fatalf("oversized body: %d %+v", code, r)
	}
}

func TestRoundTripperSigns(t *testing.T) {
	s, _, srv, _ := newPair(t)
	client := &http.Client{Transport: s.RoundTripper(nil)}
	for range 3 { // each call gets its own request ID
		resp, err := client.Post(srv.URL+"/v1/packets?a=b", "application/json", strings.NewReader(`{"n":1}`))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != `{"n":1}` {
			t.Fatalf("signed by transport: %d %q", resp.StatusCode, b)
		}
	}
}

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(good, append(testKey, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := LoadKey(good)
	if err != nil || !bytes.Equal(key, testKey) {
		t.Fatalf("LoadKey = %q, %v", key, err)
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("  hunter2-but-longer  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKey(short); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("short key: %v (must fail and not echo the key)", err)
	}
	if _, err := LoadKey(filepath.Join(dir, "absent")); err == nil {
		t.Fatal("missing key file accepted")
	}
}

func TestExemptPathsAndRejectHook(t *testing.T) {
	var reasons []string
	var mu sync.Mutex
	v := NewVerifier(testKey, 0, WithExempt("/readyz", "/metrics"), WithOnReject(func(r string) {
		mu.Lock()
		reasons = append(reasons, r)
		mu.Unlock()
	}))
	srv := httptest.NewServer(v.Middleware(echo))
	defer srv.Close()
	for path, want := range map[string]int{"/readyz": 200, "/metrics": 200, "/readyz/x": 401, "/v1/packets/1": 401} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("unsigned %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reasons) != 2 || reasons[0] != ReasonMissing {
		t.Errorf("reject hook saw %v", reasons)
	}
}

// TestSignatureIsBoundToTheServer: two servers of one cell share the key but not their replay
// caches, so a request captured on its way to one must not be accepted by the other, whether
// replayed byte for byte (its Host still names the first) or with the Host rewritten.
func TestSignatureIsBoundToTheServer(t *testing.T) {
	s, clock, first, _ := newPair(t)
	second := httptest.NewServer(NewVerifier(testKey, 30*time.Second, WithClock(clock.now)).Middleware(echo))
	t.Cleanup(second.Close)
	body := []byte(`{"user":"u1"}`)
	for _, method := range []string{"GET", "POST"} {
		req := signed(t, s, method, first.URL+"/v1/packets/5000/open", body)
		replay := func(host string) *http.Request {
			r := req.Clone(req.Context())
			r.URL.Host = strings.TrimPrefix(second.URL, "http://")
			r.Host = host
			r.Body = io.NopCloser(bytes.NewReader(body))
			return r
		}
		firstHost := strings.TrimPrefix(first.URL, "http://")
		if code, _, r := send(t, replay(firstHost)); code != http.StatusUnauthorized || r.Code != "unauthorized" || r.Field != "Host" || r.Message == "" {
			t.Fatalf("%s replayed to the sibling as captured: %d %+v, want 401 on Host", method, code, r)
		}
		if code, _, r := send(t, replay("")); code != http.StatusUnauthorized || r.Field != HeaderSignature {
			t.Fatalf("%s replayed to the sibling with its own Host: %d %+v, want 401 on the signature", method, code, r)
		}
		// Refused elsewhere, the request still works where it was addressed, once.
		r := req.Clone(req.Context())
		r.Body = io.NopCloser(bytes.NewReader(body))
		if code, got, _ := send(t, r); code != http.StatusOK || got != string(body) {
			t.Fatalf("%s to its own server: %d %q", method, code, got)
		}
	}
}

// TestNamedAuthorities: a server reached under a name (or through a port mapping) is told the
// authorities it answers to, and then answers to those only.
func TestNamedAuthorities(t *testing.T) {
	s := NewSigner(testKey)
	srv := httptest.NewServer(NewVerifier(testKey, 0, WithAuthorities("Cell-0-Server-1.rp.svc:8080", "cell-0-server-1.rp.svc")).Middleware(echo))
	t.Cleanup(srv.Close)
	for host, want := range map[string]int{
		"cell-0-server-1.rp.svc:8080":          http.StatusOK, // names compare without case
		"cell-0-server-1.rp.svc":               http.StatusOK,
		"cell-0-server-1.rp.svc:80":            http.StatusOK, // the default port is the same authority
		"cell-0-server-2.rp.svc:8080":          http.StatusUnauthorized,
		"cell-0-server-1.rp.svc:8081":          http.StatusUnauthorized,
		strings.TrimPrefix(srv.URL, "http://"): http.StatusUnauthorized, // named: the bare address is not one of them
	} {
		req, _ := http.NewRequest("GET", srv.URL+"/v1/packets/1", nil)
		req.Host = host
		if err := s.Sign(req, nil); err != nil {
			t.Fatal(err)
		}
		if code, _, r := send(t, req); code != want || (want != http.StatusOK && r.Field != "Host") {
			t.Errorf("Host %s: %d %+v, want %d", host, code, r, want)
		}
	}
}

// TestUnknownIdentityRefuses: without configured authorities and without the connection's
// local address there is nothing to check the Host against, so nothing is accepted.
func TestUnknownIdentityRefuses(t *testing.T) {
	s := NewSigner(testKey)
	v := NewVerifier(testKey, 0)
	req := httptest.NewRequest("GET", "/v1/packets/1", nil)
	req.Host = "10.0.0.7:8080"
	if err := s.Sign(req, nil); err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(req, nil); ReasonOf(err) != ReasonWrongServer {
		t.Fatalf("Verify without an identity: %v", err)
	}
}

func TestCanonicalAuthority(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.7:8080":          "10.0.0.7:8080",
		"10.0.0.7":               "10.0.0.7:80",
		"Cell-0.RP.svc:8080":     "cell-0.rp.svc:8080",
		"[::1]:8080":             "[::1]:8080",
		"[::1]":                  "[::1]:80",
		"[0:0:0:0:0:0:0:1]:8080": "[::1]:8080",
		"[fe80::1%eth0]:8080":    "[fe80::1]:8080",
		"[::ffff:10.0.0.7]:8080": "10.0.0.7:8080",
		"":                       ":80",
		"cell-0.rp.svc.:8080":    "cell-0.rp.svc.:8080",
		"cell-0.rp.svc:":         "cell-0.rp.svc:80",
	} {
		if got := canonicalAuthority(in, "80"); got != want {
			t.Errorf("canonicalAuthority(%q) = %q, want %q", in, got, want)
		}
	}
}
