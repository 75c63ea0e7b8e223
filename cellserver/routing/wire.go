package routing

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// Wire names shared by the gateway and the cell servers for creates: the gateway chooses the
// slot (it sees the whole table) and the cell either issues the ID there or refuses the slot, so
// both sides must spell these the same way.
const (
	// HeaderSlot carries the slot, in decimal, a create must use.
	HeaderSlot = "X-Redpacket-Slot"
	// HeaderCell names, in the gateway's answers, the cell that answered (for operators,
	// the load tool's routing check and tests).
	HeaderCell = "X-Redpacket-Cell"
	// CodeSlotUnavailable is the error code of a cell's 409 answer when it will not issue an ID
	// in the asked slot (masked, breaker tripped, or not owned by the cell at this instant). The
	// gateway retries such a create once with another slot.
	CodeSlotUnavailable = "slot_unavailable"
)

// Set-wide idempotency on the wire (see keyhome.go).
const (
	// CodeNotHome: the cell is not the home of the request's idempotency key at this instant
	// (421); the caller's routing table differs from the cell's.
	CodeNotHome = "not_home"
	// CodeKeyHandover: the key's slot is changing home (503 with Retry-After); nothing was
	// written, and the same request succeeds once the hand-over is over.
	CodeKeyHandover = "key_handover"
	// PathFindWrap (POST, the create's body) answers 200 with the packet a cell holds for the
	// body's (sender, requestId), or 404; it never creates.
	PathFindWrap = "/v1/wraps/find"
	// PathPaymentClaims (POST {"paymentTxnId","packetId","amountCents"}) binds a payment to a
	// packet in the payment's home cell: 200 with the claim in force, 409 idempotency_conflict
	// when the txn is bound to another packet.
	PathPaymentClaims = "/v1/payment-claims"
	// PathFindPaymentClaim (POST {"paymentTxnId"}) answers 200 with the claim a cell holds, or 404.
	PathFindPaymentClaim = "/v1/payment-claims/find"
)

// A cell server hands its routing table to gateways, so a new epoch it loaded from its cell's
// control schema reaches them as fast as it reached the server, not when the kubelet refreshes
// the gateway's mounted ConfigMap.
const (
	// HeaderRoutingEpoch, on every /readyz answer of a cell server, is the newest epoch of the
	// table it holds.
	HeaderRoutingEpoch = "X-Redpacket-Routing-Epoch"
	// PathRouting (GET, ?after=N) answers 200 with the server's encoded table when its newest
	// epoch is above N, 204 when it is not.
	PathRouting = "/v1/routing"
)

// Error codes of the JSON error body. A client sees the gateway's own refusals and the cell's,
// forwarded unchanged, on the same API, so one kind of fault must have one code whichever tier
// refuses it; this list is the only place codes are named. docs/api.md and docs/gateway.md
// document them.
const (
	// Bad input (400, 413): the request changes nothing.
	CodeMalformedJSON = "malformed_json" // the body is not one JSON object (or cannot be read)
	CodeInvalidInput  = "invalid_input"  // a field, path segment, query parameter or header is wrong; field names it
	CodeTooLarge      = "too_large"      // the body is above the limit

	CodeUnauthorized     = "unauthorized"       // 401: signature missing, wrong, stale, replayed or for another server
	CodeNotFound         = "not_found"          // 404: no such packet (field "id")
	CodeNoRoute          = "no_route"           // 404: no such path
	CodeMethodNotAllowed = "method_not_allowed" // 405
	CodeWrongCell        = "wrong_cell"         // 421: the packet belongs to another cell
	CodeWrongRegion      = "wrong_region"       // 421: the packet belongs to another region

	// State conflicts of a packet (409).
	CodeNotPaid             = "not_paid"
	CodeExpired             = "expired"
	CodeCancelled           = "cancelled"
	CodeExhausted           = "exhausted"
	CodeAlreadyPaid         = "already_paid"
	CodeAlreadyRefunded     = "already_refunded"
	CodeAmountMismatch      = "amount_mismatch"
	CodeIdempotencyConflict = "idempotency_conflict"

	CodeOverloaded          = "overloaded"           // 429
	CodeClientClosed        = "client_closed"        // 499: the client went away (nobody reads it)
	CodeInternal            = "internal"             // 500
	CodeUpstreamUnavailable = "upstream_unavailable" // 502: the cell did not answer
	CodeUpstreamInvalid     = "upstream_invalid"     // 502: the cell answered something unreadable
	CodeNotReady            = "not_ready"            // 503: readiness fails, or no routing table yet
	CodeUnavailable         = "unavailable"          // 503: no ID can be issued now, or the replay cache is full
	CodeShuttingDown        = "shutting_down"        // 503
	CodeDBUnavailable       = "db_unavailable"       // 503
	CodeTimeout             = "timeout"              // 503
	CodeCellUnavailable     = "cell_unavailable"     // 503: the owning cell has no ready server
	CodeNoSlotAvailable     = "no_slot_available"    // 503: no unmasked slot with a ready server for a create
)

// ErrorBody is every non-2xx answer of the API. Field is the JSON name of the input at fault
// (or "id" for the path's packet ID, or a header name) and is omitted when no single input is.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

// WriteError answers status with the JSON error body.
func WriteError(w http.ResponseWriter, status int, code, field, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(ErrorBody{Code: code, Message: message, Field: field})
}

// ErrorCode is the code of a JSON error body, or "" when body is not one.
func ErrorCode(body []byte) string {
	var e ErrorBody
	_ = json.Unmarshal(body, &e)
	return e.Code
}

// ParsePacketID reads a packet ID as it travels (a path segment or a JSON string): a positive
// decimal with no sign, no leading zero and no spaces, so one packet has one spelling and
// "+5", "05" or " 5" are refused instead of meaning packet 5.
func ParsePacketID(s string) (int64, error) {
	id, ok := canonicalInt(s)
	if !ok || id == 0 {
		return 0, fmt.Errorf("packet id %q: must be a positive decimal integer", s)
	}
	return id, nil
}

// HistoryCursor is a position in a user's history: the items strictly older than
// (AtMillis, PacketID), newest first. A cell writes it as its page's "next" and reads it as
// "before"; the gateway merges cells' pages with it, so both tiers must spell it alike.
type HistoryCursor struct {
	AtMillis int64 // the item's time, Unix milliseconds
	PacketID int64
}

// String is the wire form "<atMillis>:<packetId>".
func (c HistoryCursor) String() string {
	return strconv.FormatInt(c.AtMillis, 10) + ":" + strconv.FormatInt(c.PacketID, 10)
}

// NewerThan orders history newest first: c comes before o when it is newer, or as new with the
// larger packet ID.
func (c HistoryCursor) NewerThan(o HistoryCursor) bool {
	if c.AtMillis != o.AtMillis {
		return c.AtMillis > o.AtMillis
	}
	return c.PacketID > o.PacketID
}

// ParseHistoryCursor reads the wire form: two non-negative canonical decimals around ":".
func ParseHistoryCursor(s string) (HistoryCursor, error) {
	at, id, ok := strings.Cut(s, ":")
	a, ok1 := canonicalInt(at)
	p, ok2 := canonicalInt(id)
	if !ok || !ok1 || !ok2 {
		return HistoryCursor{}, fmt.Errorf("cursor %q: want <atMillis>:<packetId>, non-negative decimal integers", s)
	}
	return HistoryCursor{AtMillis: a, PacketID: p}, nil
}

// canonicalInt reads a non-negative int64 written in its one canonical decimal form: digits
// only, no leading zero except "0" itself. strconv.ParseInt alone accepts "+5".
func canonicalInt(s string) (int64, bool) {
	if s == "" || len(s) > 19 || (s[0] == '0' && len(s) > 1) {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}
