package packet

import (
	"errors"
	"fmt"
	"unicode"
	"unicode/utf8"
)

// Limits bound what a packet may be. The operator passes the set's packet limits
// (docs/design.md §3) down to every server through flags.
type Limits struct {
	MaxTotalCents  int64 // largest total of one packet
	MaxCount       int   // most shares in one packet
	MaxShareCents  int64 // largest average share a fixed packet may promise; 0 = no limit
	MaxIDLength    int   // sender, user, request and payment IDs
	MaxGroupLength int
	MaxGreeting    int // runes
}

// DefaultLimits mirror the festival product: at most 20,000.00 in one packet and up to 1,000
// shares, so the largest groups can all open one packet.
var DefaultLimits = Limits{
	MaxTotalCents:  2_000_000,
	MaxCount:       1000,
	MaxIDLength:    64,
	MaxGroupLength: 64,
	MaxGreeting:    128,
}

// FieldError is bad input that names the offending field with its JSON name, so the HTTP
// tier can answer 400 {"field": ...} without guessing.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s: %s", e.Field, e.Message) }

// ErrInvalid is matched by every FieldError through errors.Is.
var ErrInvalid = errors.New("invalid input")

func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// WrapRequest is a sender's request to create a packet.
type WrapRequest struct {
	Sender     string
	RequestID  string
	TotalCents int64
	Count      int
	Kind       Kind
	Group      string
	Greeting   string
}

// ValidateWrap refuses a wrap that could not be paid out exactly: fields out of range, a
// total too small for one cent per share, or a fixed total that does not divide evenly.
func ValidateWrap(r WrapRequest, l Limits) error {
	if err := validateID("sender", r.Sender, l.MaxIDLength); err != nil {
		return err
	}
	if err := validateID("requestId", r.RequestID, l.MaxIDLength); err != nil {
		return err
	}
	switch r.Kind {
	case KindRandom, KindFixed:
	default:
		return invalid("kind", "must be %q or %q", KindRandom, KindFixed)
	}
	if r.Count < 1 {
		return invalid("count", "must be at least 1")
	}
	if r.Count > l.MaxCount {
		return invalid("count", "must be at most %d", l.MaxCount)
	}
	if r.TotalCents < 1 {
		return invalid("totalCents", "must be positive")
	}
	if r.TotalCents > l.MaxTotalCents {
		return invalid("totalCents", "must be at most %d", l.MaxTotalCents)
	}
	if r.TotalCents < int64(r.Count) {
		return invalid("totalCents", "%d cents cannot give %d shares of at least 1 cent", r.TotalCents, r.Count)
	}
	if r.Kind == KindFixed && r.TotalCents%int64(r.Count) != 0 {
		return invalid("totalCents", "a fixed packet's total must divide evenly by count (%d cents over %d shares)", r.TotalCents, r.Count)
	}
	if l.MaxShareCents > 0 && r.Kind == KindFixed && r.TotalCents/int64(r.Count) > l.MaxShareCents {
		return invalid("totalCents", "a share may be at most %d cents", l.MaxShareCents)
	}
	if r.Group != "" {
		if err := validateID("group", r.Group, l.MaxGroupLength); err != nil {
			return err
		}
	}
	if !utf8.ValidString(r.Greeting) {
		return invalid("greeting", "must be valid UTF-8")
	}
	if n := utf8.RuneCountInString(r.Greeting); n > l.MaxGreeting {
		return invalid("greeting", "must be at most %d characters", l.MaxGreeting)
	}
	for _, c := range r.Greeting {
		if unicode.IsControl(c) {
			return invalid("greeting", "must not contain control characters")
		}
	}
	return nil
}

// PayRequest is the payment system's notice that the sender paid for a packet.
type PayRequest struct {
	PaymentTxnID string
	AmountCents  int64
}

// ValidatePay checks the notice's shape; whether the amount equals the total is a question
// for the stored packet.
func ValidatePay(r PayRequest, l Limits) error {
	if err := validateID("paymentTxnId", r.PaymentTxnID, l.MaxIDLength); err != nil {
		return err
	}
	if r.AmountCents < 1 {
		return invalid("amountCents", "must be positive")
	}
	if r.AmountCents > l.MaxTotalCents {
		return invalid("amountCents", "must be at most %d", l.MaxTotalCents)
	}
	return nil
}

// ValidateUser checks a user ID given to grab, open or a history query.
func ValidateUser(field, user string, l Limits) error { return validateID(field, user, l.MaxIDLength) }

// validateID accepts printable ASCII without spaces or slashes: IDs travel in URL paths,
// idempotency keys and log lines, where anything else invites ambiguity.
func validateID(field, v string, max int) error {
	if v == "" {
		return invalid(field, "must not be empty")
	}
	if len(v) > max {
		return invalid(field, "must be at most %d characters", max)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c <= ' ' || c >= 0x7f || c == '/' {
			return invalid(field, "must be printable ASCII without spaces or '/'")
		}
	}
	return nil
}
