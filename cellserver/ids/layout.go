// Package ids owns the packet ID layout. It is pure (no I/O, no database) and shared by every
// tier, because everything about a packet's placement follows from its ID alone:
//
//	id = prefix*1000 + slot
//	prefix = seconds<<22 | region<<20 | worker<<12 | seq
//
// The last three decimal digits are the slot, so a human reading an ID sees its shard.
// seconds counts from Epoch (2024-01-01 UTC) in 31 bits, which lasts until 2092; region
// (2 bits) names the home region of the packet (0 with one region); worker (8 bits) is the
// worker number a server leases from its cell's DB; seq (12 bits) counts IDs issued by one
// worker in one second for one slot. Because the time is the top field, IDs are
// time-ordered, and the creation second gives the day table and the routing epoch.
//
// This file must never do I/O: the gateway, the store and the operator all import it.
package ids

import (
	"fmt"
	"time"
)

// Field widths and limits of the layout.
const (
	SlotDigits = 1000 // the slot is id % SlotDigits
	MaxSlots   = SlotDigits

	secondsBits = 31
	regionBits  = 2
	workerBits  = 8
	seqBits     = 12

	MaxRegion  = 1<<regionBits - 1
	MaxWorker  = 1<<workerBits - 1
	MaxSeq     = 1<<seqBits - 1
	maxSeconds = 1<<secondsBits - 1
)

// Epoch is the zero of the ID clock.
var Epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Parts are the fields an ID is made of.
type Parts struct {
	Created time.Time // truncated to the second
	Region  int
	Worker  int
	Seq     int
	Slot    int
}

// Compose builds an ID from its parts, refusing any field out of range.
func Compose(p Parts) (int64, error) {
	secs := p.Created.Unix() - Epoch.Unix()
	switch {
	case secs < 0 || secs > maxSeconds:
		return 0, fmt.Errorf("compose id: time %s outside the ID clock", p.Created.UTC().Format(time.RFC3339))
	case p.Region < 0 || p.Region > MaxRegion:
		return 0, fmt.Errorf("compose id: region %d outside 0..%d", p.Region, MaxRegion)
	case p.Worker < 0 || p.Worker > MaxWorker:
		return 0, fmt.Errorf("compose id: worker %d outside 0..%d", p.Worker, MaxWorker)
	case p.Seq < 0 || p.Seq > MaxSeq:
		return 0, fmt.Errorf("compose id: seq %d outside 0..%d", p.Seq, MaxSeq)
	case p.Slot < 0 || p.Slot >= MaxSlots:
		return 0, fmt.Errorf("compose id: slot %d outside 0..%d", p.Slot, MaxSlots-1)
	}
	prefix := secs<<(regionBits+workerBits+seqBits) |
		int64(p.Region)<<(workerBits+seqBits) |
		int64(p.Worker)<<seqBits |
		int64(p.Seq)
	return prefix*SlotDigits + int64(p.Slot), nil
}

// Decompose splits an ID into its parts. It fails for IDs no allocator could have issued
// (zero, negative, or a time before Epoch is impossible by construction).
func Decompose(id int64) (Parts, error) {
	if id <= 0 {
		return Parts{}, fmt.Errorf("packet id %d: must be positive", id)
	}
	prefix := id / SlotDigits
	p := Parts{
		Slot:   int(id % SlotDigits),
		Seq:    int(prefix & MaxSeq),
		Worker: int(prefix >> seqBits & MaxWorker),
		Region: int(prefix >> (workerBits + seqBits) & MaxRegion),
	}
	p.Created = Epoch.Add(time.Duration(prefix>>(regionBits+workerBits+seqBits)) * time.Second)
	return p, nil
}

// Slot is the slot of an ID (its last three decimal digits).
func Slot(id int64) int { return int(id % SlotDigits) }

// CreatedAt is the second the ID was issued in.
func CreatedAt(id int64) time.Time {
	return Epoch.Add(time.Duration(id/SlotDigits>>(regionBits+workerBits+seqBits)) * time.Second)
}

// Region is the home region encoded in the ID.
func Region(id int64) int { return int(id / SlotDigits >> (workerBits + seqBits) & MaxRegion) }
