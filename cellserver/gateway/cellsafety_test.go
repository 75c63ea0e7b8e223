package gateway

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/internal/testenv"
)

// TestOneDownCellLeavesTheGatewayReady (issue 11 §5): a cell with no ready server gets 503 for
// its own packets only; the gateway stays ready (its readiness probe keeps it in the Service)
// while any cell can serve, reports per-cell serving in its metrics, and is unready only when no
// cell can serve.
func TestOneDownCellLeavesTheGatewayReady(t *testing.T) {
	table := twoEpochTable()
	h := newHarness(t, table, 1, cellsABC()...)
	testenv.Eventually(t, 5*time.Second, "the gateway to see it", testenv.Holds(func() bool { return h.gw.Ready() == nil }))

	setReady := func(cell string, ready bool) {
		h.cells[cell].mu.Lock()
		h.cells[cell].ready = map[string]bool{table.Endpoints[cell][0]: ready}
		h.cells[cell].mu.Unlock()
	}
	// -1: the series does not exist.
	serving := func(cell string) float64 {
		families, err := h.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() != "rp_gateway_cell_serving" {
				continue
			}
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "cell" && l.GetValue() == cell {
						return m.GetGauge().GetValue()
					}
				}
			}
		}
		return -1
	}

	setReady("c", false)
	testenv.Eventually(t, 5*time.Second, "the gateway to see it", testenv.Holds(func() bool { return len(h.gw.ReadyServers("c")) == 0 }))
	if a := h.do("GET", "/readyz", ""); a.status != http.StatusOK {
		t.Fatalf("readyz with one cell down: %d %s, want 200 while cells a and b serve", a.status, a.raw)
	}
	if a := h.do("POST", fmt.Sprintf("/v1/packets/%d/open", packetID(t, epoch2, 3, 0)), "{}"); a.status != http.StatusServiceUnavailable || a.body["code"] != "cell_unavailable" {
		t.Errorf("packet of the down cell: %d %s, want 503 cell_unavailable", a.status, a.raw)
	}
	if a := h.do("POST", fmt.Sprintf("/v1/packets/%d/open", packetID(t, epoch2, 0, 0)), "{}"); a.status != http.StatusOK || a.cell != "a" {
		t.Errorf("packet of a serving cell: %d from %q %s", a.status, a.cell, a.raw)
	}
	testenv.Eventually(t, 5*time.Second, "the gateway to see it", testenv.Holds(func() bool { return serving("c") == 0 && serving("a") == 1 && serving("b") == 1 }))

	for _, cell := range []string{"a", "b"} {
		setReady(cell, false)
	}
	testenv.Eventually(t, 5*time.Second, "the gateway to see it", testenv.Holds(func() bool { return len(h.gw.ReadyServers("a")) == 0 && len(h.gw.ReadyServers("b")) == 0 }))
	a := h.do("GET", "/readyz", "")
	if a.status != http.StatusServiceUnavailable || a.body["code"] != "not_ready" {
		t.Fatalf("readyz with every cell down: %d %s", a.status, a.raw)
	}
	for _, cell := range []string{"a", "b", "c"} {
		if !strings.Contains(a.raw, cell) {
			t.Errorf("readyz message %q does not name cell %s", a.raw, cell)
		}
	}

	setReady("b", true)
	testenv.Eventually(t, 5*time.Second, "the gateway to see it", testenv.Holds(func() bool { return h.gw.Ready() == nil && serving("b") == 1 && serving("a") == 0 }))
}

// TestStartingGatewayWaitsForEveryCell: a gateway that starts before one of its cells is
// reachable (a new set, cluster DNS not yet serving the cell) stays out of its Service until
// it has seen that cell serve, so it never answers 503 cell_unavailable for a cell that is up;
// past the startup grace a cell still down no longer holds it back, and once warm it stays
// ready with a cell down (TestOneDownCellLeavesTheGatewayReady).
func TestStartingGatewayWaitsForEveryCell(t *testing.T) {
	for _, tc := range []struct {
		name  string
		grace time.Duration
		comes bool // the cell becomes ready during the test
	}{
		{"the cell comes up", time.Hour, true},
		{"the cell stays down past the grace", 300 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			table := twoEpochTable()
			down := func(c *Config, h *harness) {
				c.StartupGrace = tc.grace
				h.cells["c"].ready = map[string]bool{table.Endpoints["c"][0]: false}
			}
			start := time.Now() // before the gateway's own start, so never later than it
			h := newHarnessWith(t, table, 1, down, cellsABC()...)
			if a := h.do("GET", "/readyz", ""); a.status != http.StatusServiceUnavailable || !strings.Contains(a.raw, "cells c") {
				t.Fatalf("readyz while cell c was never seen: %d %s, want 503 naming c", a.status, a.raw)
			}
			if tc.comes {
				h.cells["c"].mu.Lock()
				h.cells["c"].ready = nil
				h.cells["c"].mu.Unlock()
			}
			testenv.Eventually(t, 5*time.Second, "ready", testenv.Holds(func() bool { return h.do("GET", "/readyz", "").status == http.StatusOK }))
			if !tc.comes && time.Since(start) < tc.grace {
				t.Errorf("ready after %s, before the grace of %s, with cell c never seen", time.Since(start), tc.grace)
			}
			// Warm now: a cell going down later does not take the gateway out.
			h.cells["a"].mu.Lock()
			h.cells["a"].ready = map[string]bool{table.Endpoints["a"][0]: false}
			h.cells["a"].mu.Unlock()
			testenv.Eventually(t, 5*time.Second, "the gateway to see a down", testenv.Holds(func() bool { return len(h.gw.ReadyServers("a")) == 0 }))
			if a := h.do("GET", "/readyz", ""); a.status != http.StatusOK {
				t.Errorf("readyz once warm with cell a down: %d %s", a.status, a.raw)
			}
		})
	}
}
