package routing

import (
	"encoding/json"
	"net/http"
)

// Wire names shared by the gateway and the cell servers for creates: the gateway chooses the
// slot (it sees the whole table) and the cell either issues the ID there or refuses the slot, so
// both sides must spell these the same way.
const (
	// HeaderSlot carries the slot, in decimal, a create must use.
	HeaderSlot = "X-Redpacket-Slot"
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
