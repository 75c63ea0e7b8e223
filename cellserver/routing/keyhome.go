package routing

import (
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"time"
)

// Set-wide idempotency (docs/design.md, "Guarantees across cells").
//
// A wrap's (sender, requestId) and a payment's paymentTxnId must name at most one packet in the
// whole set, but a cell only knows its own rows. So every idempotency key has a home: the key
// hashes to a key slot, and the key's home is the owner of that slot in the epoch in force. The
// home holds the key's row (the wrap's packet itself, or the payment's claim), so every attempt
// of one key meets one unique index, whatever masks, server readiness or outages do between
// attempts. Masks do not move homes: a masked slot stops IDs, not keys.
//
// Epochs do move homes. A key first seen under an older epoch lives in that epoch's owner, so
// before a new key is accepted at its home, the gateway asks every earlier owner of the key slot
// the table still names (PriorHomes) whether it knows the key. Cells named by the table are
// never deleted and epochs are pruned only once every packet created under them is settled, so
// a key is deduplicated set-wide for at least the whole life of the packet it named.
//
// At the instant an epoch moves a key slot, the old home may still be committing a key the new
// home's lookup cannot see yet. KeyHandover closes that race: for KeyHandover after the epoch
// takes effect nobody accepts a new key of a moved key slot (the gateway answers 503 with
// Retry-After), and the old home refuses, just before it commits, any key whose slot it no
// longer owns. With clocks within KeyHandover/2 of each other, the old home's last commit
// precedes the first lookup the new home's gateway makes.

// KeyHandover is how long after an epoch moves a key slot no new key of that slot is accepted.
const KeyHandover = 5 * time.Second

// ErrKeyHandover: the key slot changed home less than KeyHandover ago; retry shortly.
var ErrKeyHandover = errors.New("key slot is changing home")

// ErrNotHome: this cell is not the home of the key (the caller routed with another table).
var ErrNotHome = errors.New("not the home cell of this key")

// Idempotency key kinds: the same string as a wrap key and as a payment key are different keys.
const (
	keyWrap    = "wrap\x00"
	keyPayment = "pay\x00"
)

// WrapKey is the set-wide idempotency key of a wrap.
func WrapKey(sender, requestID string) string { return keyWrap + sender + "\x00" + requestID }

// PaymentKey is the set-wide idempotency key of a payment notice.
func PaymentKey(paymentTxnID string) string { return keyPayment + paymentTxnID }

// KeySlot is the key slot of an idempotency key: FNV-1a over its bytes, so keys that differ only
// in letter case are different keys with (almost always) different homes.
func (t *Table) KeySlot(key string) int {
	h := fnv.New64a()
	h.Write([]byte(key))
	return int(h.Sum64() % uint64(t.SlotCount))
}

// KeyHome is the cell that holds key at now, or ErrKeyHandover while its key slot is changing
// owner, or ErrNoOwner for an empty table.
func (t *Table) KeyHome(key string, now time.Time) (string, error) {
	slot := t.KeySlot(key)
	i := t.epochIndexAt(now)
	if i < 0 {
		return "", fmt.Errorf("key slot %d: table has no epochs: %w", slot, ErrNoOwner)
	}
	home := t.Epochs[i].Owner(slot)
	if home == "" {
		return "", fmt.Errorf("key slot %d in epoch %d: %w", slot, t.Epochs[i].Number, ErrNoOwner)
	}
	if i > 0 && now.Before(t.Epochs[i].EffectiveTime.Add(KeyHandover)) && t.Epochs[i-1].Owner(slot) != home {
		return "", fmt.Errorf("key slot %d moves to %s at epoch %d (%s): %w", slot, home, t.Epochs[i].Number,
			t.Epochs[i].EffectiveTime.UTC().Format(time.RFC3339), ErrKeyHandover)
	}
	return home, nil
}

// PriorHomes lists, sorted, the cells other than home that held key slot of key under an epoch
// in force before now: where a key first seen earlier may live.
func (t *Table) PriorHomes(key string, home string, now time.Time) []string {
	slot := t.KeySlot(key)
	var out []string
	for i := 0; i <= t.epochIndexAt(now) && i < len(t.Epochs); i++ {
		if c := t.Epochs[i].Owner(slot); c != "" && c != home && !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}

// CheckHome is the home cell's own check before it accepts, and again just before it commits,
// a new row for key: nil when cell is key's home at now.
func (t *Table) CheckHome(key, cell string, now time.Time) error {
	home, err := t.KeyHome(key, now)
	if err != nil {
		return err
	}
	if home != cell {
		return fmt.Errorf("key slot %d belongs to cell %s: %w", t.KeySlot(key), home, ErrNotHome)
	}
	return nil
}

// epochIndexAt is the index of EpochAt(ts), or -1 without epochs.
func (t *Table) epochIndexAt(ts time.Time) int {
	if len(t.Epochs) == 0 {
		return -1
	}
	for i := len(t.Epochs) - 1; i > 0; i-- {
		if !t.Epochs[i].EffectiveTime.After(ts) {
			return i
		}
	}
	return 0
}
