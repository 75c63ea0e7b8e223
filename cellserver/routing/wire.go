package routing

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
