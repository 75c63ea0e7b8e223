package store

import (
	"errors"
	"time"
)

// Kind is how a packet's total is divided among its shares.
type Kind string

const (
	KindRandom Kind = "random"
	KindFixed  Kind = "fixed"
)

// The kind column's values in the packet day tables.
const (
	KindColumnRandom = 1
	KindColumnFixed  = 2
)

func (k Kind) code() int {
	if k == KindFixed {
		return KindColumnFixed
	}
	return KindColumnRandom
}

// KindOfColumn is the Kind a packet row's kind column holds, for code that reads raw rows
// (the lock benchmark's baselines).
func KindOfColumn(code int) Kind {
	if code == KindColumnFixed {
		return KindFixed
	}
	return KindRandom
}

// Status is where a packet is in its lifecycle. Exhausted is not a status: it is an active
// packet whose remaining count reached zero, and it still settles at expiry like any other.
type Status int

const (
	StatusWrapped   Status = 0 // created, waiting for payment
	StatusActive    Status = 1 // paid; open until expiry or exhaustion
	StatusExpired   Status = 2 // settled: the remainder (maybe 0) was refunded
	StatusCancelled Status = 3 // never paid before the deadline; no money ever moved
)

func (s Status) String() string {
	switch s {
	case StatusWrapped:
		return "wrapped"
	case StatusActive:
		return "active"
	case StatusExpired:
		return "expired"
	case StatusCancelled:
		return "cancelled"
	}
	return "unknown"
}

// Packet is one packet row. Amounts are int64 cents.
// Conservation (docs/design.md §4.1): TotalCents = Σ opened + RefundedCents + RemainingCents.
type Packet struct {
	ID             int64
	Sender         string
	RequestID      string
	Kind           Kind
	Status         Status
	TotalCents     int64
	Count          int
	RemainingCents int64
	RemainingCount int
	RefundedCents  int64
	Group          string
	Greeting       string
	PaymentTxnID   string
	CreatedAt      time.Time
	PaidAt         time.Time // zero until paid
	ExpiresAt      time.Time // payment deadline while wrapped, then open deadline
	SettledAt      time.Time // zero until expired or cancelled
}

// SameWrap reports whether o asks for the packet p was wrapped as: a retried wrap must carry
// the same content, or its request ID is being reused for another packet.
func (p *Packet) SameWrap(o Packet) bool {
	return p.TotalCents == o.TotalCents && p.Count == o.Count && p.Kind == o.Kind && p.Group == o.Group && p.Greeting == o.Greeting
}

// Exhausted reports whether every share has been opened.
func (p *Packet) Exhausted() bool { return p.Status == StatusActive && p.RemainingCount == 0 }

// Receipt is one receive record: a user's share of a packet.
type Receipt struct {
	PacketID    int64
	Seq         int // 1-based order of the open within the packet
	User        string
	AmountCents int64
	OpenedAt    time.Time
}

// OpenOutcome is one caller's answer from a (possibly batched) open.
type OpenOutcome struct {
	User        string
	AmountCents int64
	Seq         int
	Repeat      bool  // the user had opened before; AmountCents is the first amount
	Err         error // a refusal for this caller only, e.g. ErrExhausted
}

// ShareFunc computes the next share; the packet package supplies the split rule.
type ShareFunc func(kind Kind, remaining int64, count int) (int64, error)

// Domain errors. They are refusals, not failures: the breaker never counts them.
var (
	ErrNotFound         = errors.New("packet not found")
	ErrNotPaid          = errors.New("packet not paid")
	ErrExpired          = errors.New("packet expired")
	ErrExhausted        = errors.New("packet exhausted")
	ErrAlreadyPaid      = errors.New("packet already paid by another payment")
	ErrAlreadyRefunded  = errors.New("packet already settled")
	ErrAmountMismatch   = errors.New("payment amount does not equal the packet total")
	ErrIdempotencyClash = errors.New("idempotency key reused with different content")
	ErrPaymentReused    = errors.New("payment transaction already paid another packet")
	ErrCancelled        = errors.New("packet cancelled: never paid before its deadline")
	// ErrKeyElsewhere: this cell is not, or not yet, the home of the request's idempotency
	// key (docs/design.md, "Guarantees across cells"); nothing was written.
	ErrKeyElsewhere = errors.New("idempotency key is homed in another cell")
)

// ErrUnreadable: a table the answer needs exists in the cell's records but cannot be read
// now (missing during a restore, say). It is a failure to retry, never a refusal.
var ErrUnreadable = errors.New("table unreadable")

// IsRefusal reports whether err is a domain refusal rather than an infrastructure failure.
func IsRefusal(err error) bool {
	for _, e := range []error{ErrNotFound, ErrNotPaid, ErrExpired, ErrExhausted, ErrAlreadyPaid,
		ErrAlreadyRefunded, ErrAmountMismatch, ErrIdempotencyClash, ErrPaymentReused, ErrCancelled, ErrKeyElsewhere} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Outbox kinds. Each row carries its own idempotency key, so a consumer that sees a row
// twice applies it once.
type OutboxKind int

const (
	OutboxPay         OutboxKind = 1 // sender → escrow, on payment
	OutboxCredit      OutboxKind = 2 // escrow → user, on open; also the receiver's history line
	OutboxRefund      OutboxKind = 3 // escrow → sender, at expiry
	OutboxHistorySent OutboxKind = 4 // sender's history entry
	OutboxHistoryRecv OutboxKind = 5 // a receiver's history line alone (not written by opens)
)

func (k OutboxKind) String() string {
	switch k {
	case OutboxPay:
		return "pay"
	case OutboxCredit:
		return "credit"
	case OutboxRefund:
		return "refund"
	case OutboxHistorySent:
		return "history_sent"
	case OutboxHistoryRecv:
		return "history_received"
	}
	return "unknown"
}

// OutboxRow is one pending effect of a committed transaction.
type OutboxRow struct {
	ID          int64
	Kind        OutboxKind
	Key         string // idempotency key, unique
	PacketID    int64
	Account     string // user (credit, history) or sender (pay, refund, sent history)
	AmountCents int64
	Count       int    // shares, on sent history
	Group       string // on sent history
	At          time.Time
	Attempts    int
}

// History roles.
type Role int

const (
	RoleSent     Role = 1
	RoleReceived Role = 2
)

// HistoryItem is one line of a user's sent or received history.
type HistoryItem struct {
	User        string
	Role        Role
	PacketID    int64
	At          time.Time
	AmountCents int64
	Count       int
	Group       string
}

// Settlement is what the expiry sweeper did to one packet.
type Settlement struct {
	PacketID      int64
	Sender        string
	RefundedCents int64
	Status        Status
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}
