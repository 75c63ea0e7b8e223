package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/signing"
)

// TestTLSBothWays: the gateway serves HTTPS and calls an HTTPS cell it verifies against a CA
// file, as it does when traffic leaves the pod.
func TestTLSBothWays(t *testing.T) {
	dir := t.TempDir()
	key := []byte("cmd-gateway-tls-test-key-0123456789ab")
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyFile := write("key", key)

	cell := httptest.NewTLSServer(signing.NewVerifier(key, 0).Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"ok":true}`)
	})))
	defer cell.Close()
	caFile := write("ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cell.Certificate().Raw}))

	certPEM, keyPEM, pool := selfSigned(t)
	certFile, tlsKeyFile := write("tls.crt", certPEM), write("tls.key", keyPEM)

	table := &routing.Table{
		Set: "rp", SlotCount: 10,
		Epochs:    []routing.Epoch{{Number: 1, EffectiveTime: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Ranges: []routing.SlotRange{{Start: 0, End: 9, Cell: "c0"}}}},
		Endpoints: map[string][]string{"c0": {cell.URL}},
	}
	data, _ := table.Marshal()
	routingFile := write("routing.json", data)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-routing-file", routingFile, "-signing-key-file", keyFile,
			"-server-ca-file", caFile, "-tls-cert-file", certFile, "-tls-key-file", tlsKeyFile, "-probe-interval", "20ms", "-log-level", "error", "-drain-delay", "0"},
			func(addr string) { addrc <- addr })
	}()
	var base string
	select {
	case addr := <-addrc:
		base = "https://" + addr
	case err := <-done:
		t.Fatalf("gateway exited: %v", err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	id, _ := ids.Compose(ids.Parts{Created: time.Now(), Slot: 2})
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := client.Get(fmt.Sprintf("%s/v1/packets/%d", base, id))
		if err != nil {
			t.Fatalf("https to gateway: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && string(body) == `{"ok":true}` {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never routed over TLS: %d %s", resp.StatusCode, body)
		}
		time.Sleep(10 * time.Millisecond) // waiting for the first readiness probe, with a deadline
	}
	// Plain HTTP to the TLS listener is refused.
	if resp, err := http.Get("http://" + base[len("https://"):] + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP accepted on the TLS listener")
		}
	}
}

func selfSigned(t *testing.T) (certPEM, keyPEM []byte, pool *x509.CertPool) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "gateway-test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), pool
}
