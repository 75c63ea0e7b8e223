package guard_test

import (
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/guard"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestGrabStateMarkersAndExpiry(t *testing.T) {
	mc := testenv.StartMemcached(t)
	g := newGuard(t, guard.Config{Addr: mc.Addr(), StateTTL: time.Second, ProbeEvery: 50 * time.Millisecond})
	if _, cached, opened := g.GrabState(1, "bob"); cached || opened {
		t.Fatal("hit on an empty cache")
	}
	exp := time.UnixMilli(1764181403000).UTC()
	g.SetState(1, guard.PacketState{Status: 1, ExpiresAt: exp, Remaining: 7})
	users := make([]string, 50)
	for i := range users {
		users[i] = "u" + strings.Repeat("x", i)
	}
	g.MarkOpened(1, users)
	st, cached, opened := g.GrabState(1, "bob")
	if !cached || opened || st.Status != 1 || !st.ExpiresAt.Equal(exp) || st.Remaining != 7 {
		t.Fatalf("state %+v cached=%v opened=%v", st, cached, opened)
	}
	for _, u := range users {
		if _, _, opened := g.GrabState(1, u); !opened {
			t.Fatalf("no opened marker for %s", u)
		}
	}
	// A key memcached cannot hold is a miss, not a memcached failure.
	if _, _, opened := g.GrabState(1, strings.Repeat("y", 300)); opened || g.Degraded() {
		t.Fatalf("over-long key: opened=%v degraded=%v", opened, g.Degraded())
	}
	// Forget drops the state; markers stay true after settlement.
	g.Forget(1)
	if _, cached, opened := g.GrabState(1, users[0]); cached || !opened {
		t.Fatalf("after Forget: cached=%v opened=%v", cached, opened)
	}
	g.SetState(2, guard.PacketState{Status: 1, ExpiresAt: exp, Remaining: 3})
	testenv.Eventually(t, 15*time.Second, "state entry to expire", testenv.Holds(func() bool {
		_, cached, _ := g.GrabState(2, "bob")
		return !cached
	}))
	// memcached down: nothing is cached, so the caller asks the DB.
	g.SetState(3, guard.PacketState{Status: 1, ExpiresAt: exp, Remaining: 3})
	mc.Kill()
	testenv.Eventually(t, 15*time.Second, "fallback", testenv.Holds(func() bool {
		_, cached, _ := g.GrabState(3, "bob")
		return !cached && g.Degraded()
	}))
	g.SetState(3, guard.PacketState{Status: 1, ExpiresAt: exp, Remaining: 2}) // skipped, must not block
	g.MarkOpened(3, users)
}
