package routing

// Rendezvous picks one of servers for key by highest random weight: every server scores
// mix(key, server) and the highest wins. When a server leaves, only the keys it won move (each
// to its runner-up); every other key keeps its server, so a packet's requests keep meeting the
// same per-packet queue while the rest of the cell changes. Ties, which need a 64-bit
// collision, go to the smaller name so every gateway agrees. Empty servers gives "".
func Rendezvous(key int64, servers []string) string {
	best, bestWeight := "", uint64(0)
	for _, s := range servers {
		w := rendezvousWeight(key, s)
		if best == "" || w > bestWeight || (w == bestWeight && s < best) {
			best, bestWeight = s, w
		}
	}
	return best
}

// rendezvousWeight mixes the key with a hash of the server name. FNV-1a alone spreads
// neighbouring keys poorly (packet IDs differ in their low digits), so the combination goes
// through the SplitMix64 finaliser, whose output bits each depend on every input bit.
func rendezvousWeight(key int64, server string) uint64 {
	const (
		fnvOffset = 14695981039346656037
		fnvPrime  = 1099511628211
	)
	h := uint64(fnvOffset)
	for i := 0; i < len(server); i++ {
		h ^= uint64(server[i])
		h *= fnvPrime
	}
	return mix64(mix64(uint64(key)) ^ h)
}

func mix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}
