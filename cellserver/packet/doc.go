// Package packet owns the red packet rules: the split of a total into shares (double-average
// random or fixed), the validation of every request, and the Service that runs the lifecycle
// (wrap, pay, grab, open, details, history, expiry) on top of the store.
//
// Money correctness lives in the store's transactions (row lock + unique keys + conditional
// updates); this package must never move money outside them, and must never trust a cache
// (the guard's packet state and opened markers) for anything but grab's answer, which
// changes nothing and whose cached "yes" is checked again by open's transaction.
package packet
