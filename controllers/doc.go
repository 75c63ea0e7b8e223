// Package controllers holds the reconcilers of the RedPacketSet operator: the set reconciler
// expands a RedPacketSet into RedPacketCells, the gateway and the routing ConfigMap; the cell
// reconciler provisions each cell's MySQL, servers (with their memcached sidecar), Services,
// Secrets and PodDisruptionBudget. Decisions are made by pure functions in controllers/plan;
// this package gathers observations and applies objects.
package controllers
