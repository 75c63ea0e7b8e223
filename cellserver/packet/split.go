package packet

import (
	"fmt"
	"math/rand/v2"

	"github.com/redpacketset/redpacket/cellserver/store"
)

// Kind is how a packet's total is divided among its shares.
type Kind = store.Kind

const (
	KindRandom = store.KindRandom
	KindFixed  = store.KindFixed
)

// Rand is the random source of the split; *rand.Rand and the package-level source satisfy
// it. Tests pass a seeded source so a split can be replayed.
type Rand interface{ Int64N(n int64) int64 }

type globalRand struct{}

func (globalRand) Int64N(n int64) int64 { return rand.Int64N(n) }

// DefaultRand is safe for concurrent use.
var DefaultRand Rand = globalRand{}

// Share is the amount the next opener receives, given what is left of the packet. It never
// returns less than 1 cent nor more than what the remaining shares can give up while each
// later share keeps at least 1 cent, and the last share takes the exact remainder, so the
// shares of a packet always sum to its total.
//
// Random kind follows the "double average" rule: uniform in [1, 2×remaining/count]. The
// expected share is then remaining/count at every step, so early and late openers have the
// same expectation, while the cap keeps one lucky opener from draining the packet.
func Share(kind Kind, remaining int64, count int, r Rand) (int64, error) {
	if count < 1 {
		return 0, fmt.Errorf("split: no shares left (remaining %d cents)", remaining)
	}
	if remaining < int64(count) {
		return 0, fmt.Errorf("split: %d cents cannot give %d shares of at least 1 cent", remaining, count)
	}
	if count == 1 {
		return remaining, nil
	}
	switch kind {
	case KindFixed:
		// Wrap refuses totals that do not divide evenly, so every step divides evenly too;
		// refusing here instead of rounding keeps a corrupted row from paying out wrongly.
		if remaining%int64(count) != 0 {
			return 0, fmt.Errorf("split: fixed packet with %d cents over %d shares does not divide evenly", remaining, count)
		}
		return remaining / int64(count), nil
	case KindRandom:
		upper := 2 * (remaining / int64(count))
		// Leave at least 1 cent for each later share.
		if keep := remaining - int64(count-1); upper > keep {
			upper = keep
		}
		if upper < 1 {
			upper = 1
		}
		return 1 + r.Int64N(upper), nil
	default:
		return 0, fmt.Errorf("split: unknown kind %q", kind)
	}
}
