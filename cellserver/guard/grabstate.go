package guard

import (
	"bytes"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// PacketState is what grab needs to answer for a packet without the DB. It is only ever
// written from committed DB state, and each field only moves one way (remaining shares
// fall, the expiry of a paid packet is fixed, a settled status is final), so a stale entry
// is too optimistic, never too pessimistic.
type PacketState struct {
	Status    int // the store's status code
	ExpiresAt time.Time
	Remaining int // shares left
}

// markParallelism bounds the concurrent marker writes of one open batch: gomemcache has no
// multi-set, and up to 128 sequential round trips would hold the packet's queue worker.
const markParallelism = 8

func (g *Guard) stateKey(packetID int64) string {
	return g.cfg.KeyPrefix + "st:" + strconv.FormatInt(packetID, 10)
}

func (g *Guard) openedKey(packetID int64, user string) string {
	return g.cfg.KeyPrefix + "op:" + strconv.FormatInt(packetID, 10) + ":" + user
}

// GrabState reads, in one round trip, a packet's cached state and whether user is known to
// have opened it. With memcached unavailable it reports nothing cached, so the caller asks
// the DB: a local copy could not know about opens served by another process.
func (g *Guard) GrabState(packetID int64, user string) (st PacketState, cached, opened bool) {
	if !g.useMemcached() {
		g.stLookups.WithLabelValues("unavailable").Inc()
		return PacketState{}, false, false
	}
	sk, ok := g.stateKey(packetID), g.openedKey(packetID, user)
	items, err := g.mc.GetMulti([]string{sk, ok})
	if err != nil {
		// A key memcached cannot hold (an unusual user name) says nothing about its health.
		if !errors.Is(err, memcache.ErrMalformedKey) {
			g.memcachedFailed("get grab state", err)
		}
		g.stLookups.WithLabelValues("error").Inc()
		return PacketState{}, false, false
	}
	g.memcachedOK()
	_, opened = items[ok]
	if it, found := items[sk]; found {
		st, cached = parseState(it.Value)
	}
	switch {
	case opened:
		g.stLookups.WithLabelValues("opened").Inc()
	case cached:
		g.stLookups.WithLabelValues("hit").Inc()
	default:
		g.stLookups.WithLabelValues("miss").Inc()
	}
	return st, cached, opened
}

// SetState caches a packet's grab state. Writes never probe a memcached marked down: the
// next read does, and until then grab asks the DB.
func (g *Guard) SetState(packetID int64, st PacketState) {
	if !g.useMemcachedNoProbe() {
		return
	}
	v := strconv.Itoa(st.Status) + ":" + strconv.FormatInt(st.ExpiresAt.UnixMilli(), 10) + ":" + strconv.Itoa(st.Remaining)
	if err := g.mc.Set(&memcache.Item{Key: g.stateKey(packetID), Value: []byte(v), Expiration: g.stSec}); err != nil {
		g.memcachedFailed("set grab state", err)
	}
}

// MarkOpened records that users have opened the packet (fresh or repeat). It returns when
// every marker is written or given up, so a grab that follows the open's answer sees it.
func (g *Guard) MarkOpened(packetID int64, users []string) {
	mark := func(u string) {
		if !g.useMemcachedNoProbe() {
			return
		}
		err := g.mc.Set(&memcache.Item{Key: g.openedKey(packetID, u), Value: []byte{'1'}, Expiration: g.opSec})
		if err != nil && !errors.Is(err, memcache.ErrMalformedKey) {
			g.memcachedFailed("mark opened", err)
		}
	}
	if len(users) <= 1 {
		for _, u := range users {
			mark(u)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(len(users), markParallelism) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(users)); i = next.Add(1) - 1 {
				mark(users[i])
			}
		})
	}
	wg.Wait()
}

// parseState reads "status:expiresMs:remaining"; anything else is a miss.
func parseState(v []byte) (PacketState, bool) {
	parts := bytes.Split(v, []byte{':'})
	if len(parts) != 3 {
		return PacketState{}, false
	}
	status, err1 := strconv.Atoi(string(parts[0]))
	exp, err2 := strconv.ParseInt(string(parts[1]), 10, 64)
	rem, err3 := strconv.Atoi(string(parts[2]))
	if err1 != nil || err2 != nil || err3 != nil || rem < 0 {
		return PacketState{}, false
	}
	return PacketState{Status: status, ExpiresAt: time.UnixMilli(exp).UTC(), Remaining: rem}, true
}
