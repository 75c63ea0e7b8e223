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
