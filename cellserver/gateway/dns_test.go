package gateway

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// fakeDNS answers like cluster DNS for one headless Service: A records per pod, SRV records
// with ports. Everything else is NXDOMAIN.
func fakeDNS(t *testing.T, service string, addrs [][4]byte, srv map[string]uint16) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
			b.EnableCompression()
			match := strings.HasPrefix(q.Name.String(), service+".")
			if !match {
				b = dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, RCode: dnsmessage.RCodeNameError})
			}
			// A builder error here is a bug of this fake server; Finish reports it.
			_ = b.StartQuestions()
			_ = b.Question(q)
			_ = b.StartAnswers()
			rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}
			if match && q.Type == dnsmessage.TypeA {
				for _, a := range addrs {
					_ = b.AResource(rh, dnsmessage.AResource{A: a})
				}
			}
			if match && q.Type == dnsmessage.TypeSRV {
				for target, port := range srv {
					_ = b.SRVResource(rh, dnsmessage.SRVResource{Target: dnsmessage.MustNewName(target), Port: port, Weight: 1})
				}
			}
			out, err := b.Finish()
			if err == nil {
				_, _ = pc.WriteTo(out, from) // a lost answer is a resolver timeout, as on a real network
			}
		}
	}()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", pc.LocalAddr().String())
	}}
}

func TestDNSResolverReadsHeadlessService(t *testing.T) {
	r := fakeDNS(t, "rp-cell-1-server.festival.svc",
		[][4]byte{{10, 0, 0, 7}, {10, 0, 0, 3}},
		map[string]uint16{"pod-a.rp-cell-1-server.festival.svc.cluster.local.": 9090, "pod-b.rp-cell-1-server.festival.svc.cluster.local.": 9091})
	ctx := context.Background()

	got, err := DNSResolver{Namespace: "festival", Port: 8080, Resolver: r}.Servers(ctx, nil, "rp-cell-1")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"http://10.0.0.3:8080", "http://10.0.0.7:8080"}; !slices.Equal(got, want) {
		t.Errorf("A records: %v, want %v", got, want)
	}

	got, err = DNSResolver{Namespace: "festival", Resolver: r}.Servers(ctx, nil, "rp-cell-1")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"http://pod-a.rp-cell-1-server.festival.svc.cluster.local:9090", "http://pod-b.rp-cell-1-server.festival.svc.cluster.local:9091"}; !slices.Equal(got, want) {
		t.Errorf("SRV records: %v, want %v", got, want)
	}

	if _, err := (DNSResolver{Namespace: "festival", Port: 8080, Resolver: r}).Servers(ctx, nil, "rp-cell-9"); err == nil {
		t.Error("unknown cell resolved")
	}
}
