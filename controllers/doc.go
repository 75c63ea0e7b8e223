// Package controllers holds the reconcilers of the RedPacketSet operator: the set reconciler
// expands a RedPacketSet into RedPacketCells, the gateway and the routing ConfigMap; the cell
// reconciler provisions each cell's MySQL, servers (with their memcached sidecar), Services,
// Secrets and PodDisruptionBudget. The decisions about cells, slots, servers and routing
// epochs are pure functions in controllers/plan (plan.Compute, plan.DecideRouting,
// plan.DecideHandover, fed by controllers/setplan), and masks are decided by
// controllers/masking; this package gathers observations, calls them and applies objects.
//
// It must never write a cell's packet, outbox or ledger rows (it only counts what a cell still
// owes, through cellserver/store, and writes operator masks and epoch announcements to the
// control schema), never delete a cell whose database still holds unsettled packets or
// undelivered effects, never prune a routing epoch whose packets may still need their cell, and
// never put a secret in an object's spec, an argument or a log line.
package controllers
