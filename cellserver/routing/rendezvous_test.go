package routing

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"testing"
)

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestRendezvousStableWhenAServerLeaves(t *testing.T) {
	servers := []string{"http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080", "http://10.0.0.4:8080", "http://10.0.0.5:8080"}
	const keys = 20000
	removed := servers[2]
	rest := slices.Delete(slices.Clone(servers), 2, 3)
	perServer := map[string]int{}
	moved := 0
	for i := range keys {
		// Packet-ID-like keys: neighbours differ only in their low digits.
		key := int64(1_234_567_000_000 + i)
		before := Rendezvous(key, servers)
		perServer[before]++
		after := Rendezvous(key, rest)
		if before != after {
			moved++
			if before != removed {
				t.Fatalf("key %d moved from %s to %s although %s stayed", key, before, after, before)
			}
		} else if before == removed {
			t.Fatalf("key %d still on removed server", key)
		}
		// Order of the list must not matter: every gateway lists servers its own way.
		if rev := Rendezvous(key, []string{servers[4], servers[3], servers[2], servers[1], servers[0]}); rev != before {
			t.Fatalf("key %d: order changed the choice (%s vs %s)", key, rev, before)
		}
	}
	if frac := float64(moved) / keys; math.Abs(frac-0.2) > 0.02 {
		t.Errorf("removing 1 of 5 servers moved %.3f of keys, want ~0.2", frac)
	}
	for s, n := range perServer {
		if math.Abs(float64(n)/keys-0.2) > 0.02 {
			t.Errorf("server %s got %d of %d keys: uneven", s, n, keys)
		}
	}
}

func TestRendezvousEdgeCases(t *testing.T) {
	if got := Rendezvous(42, nil); got != "" {
		t.Errorf("Rendezvous over no servers = %q", got)
	}
	if got := Rendezvous(42, []string{"only"}); got != "only" {
		t.Errorf("Rendezvous over one server = %q", got)
	}
	// Adding a server only takes keys for itself.
	base := []string{"a", "b", "c"}
	grown := append(slices.Clone(base), "d")
	for key := range int64(5000) {
		before, after := Rendezvous(key, base), Rendezvous(key, grown)
		if before != after && after != "d" {
			t.Fatalf("key %d moved %s -> %s when d joined", key, before, after)
		}
	}
}

func ExampleRendezvous() {
	fmt.Println(Rendezvous(7, []string{"x"}))
	// Output: x
}
