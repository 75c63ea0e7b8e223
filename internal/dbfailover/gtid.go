package dbfailover

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// GTID is one MariaDB global transaction ID: domain-server-seq.
type GTID struct {
	Domain uint32
	Server uint32
	Seq    uint64
}

func (g GTID) String() string { return fmt.Sprintf("%d-%d-%d", g.Domain, g.Server, g.Seq) }

// ParseGTIDList parses MariaDB's comma-separated GTID lists: gtid_current_pos,
// gtid_binlog_pos, gtid_slave_pos, Gtid_IO_Pos (one GTID per domain) and gtid_binlog_state
// (one per domain and server). Whitespace and newlines (SHOW SLAVE STATUS wraps long lists)
// are ignored; "" is the empty list.
func ParseGTIDList(s string) ([]GTID, error) {
	var out []GTID
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		f := strings.Split(part, "-")
		if len(f) != 3 {
			return nil, fmt.Errorf("GTID %q: want domain-server-seq", part)
		}
		d, err1 := strconv.ParseUint(f[0], 10, 32)
		sv, err2 := strconv.ParseUint(f[1], 10, 32)
		seq, err3 := strconv.ParseUint(f[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("GTID %q: fields must be unsigned integers", part)
		}
		out = append(out, GTID{Domain: uint32(d), Server: uint32(sv), Seq: seq})
	}
	return out, nil
}

// Position is a replication position: per replication domain, the last GTID applied (what
// gtid_current_pos and Gtid_IO_Pos report). With gtid_strict_mode seq_no only grows within a
// domain, so comparing seq_no per domain orders two positions of one cell's history.
type Position map[uint32]GTID

// ParsePosition parses a one-GTID-per-domain list; two GTIDs of one domain are an error.
func ParsePosition(s string) (Position, error) {
	list, err := ParseGTIDList(s)
	if err != nil {
		return nil, err
	}
	p := Position{}
	for _, g := range list {
		if _, dup := p[g.Domain]; dup {
			return nil, fmt.Errorf("position %q: domain %d twice", s, g.Domain)
		}
		p[g.Domain] = g
	}
	return p, nil
}

// MustPosition is ParsePosition for literals in tests and examples.
func MustPosition(s string) Position {
	p, err := ParsePosition(s)
	if err != nil {
		panic(err)
	}
	return p
}

// Covers reports whether p has applied at least everything q has, domain by domain.
func (p Position) Covers(q Position) bool {
	for d, g := range q {
		if p[d].Seq < g.Seq {
			return false
		}
	}
	return true
}

// Equal reports the same seq_no in every domain.
func (p Position) Equal(q Position) bool { return p.Covers(q) && q.Covers(p) }

// String is the position in MariaDB's syntax, domains in order (usable in SQL).
func (p Position) String() string {
	doms := make([]uint32, 0, len(p))
	for d := range p {
		doms = append(doms, d)
	}
	slices.Sort(doms)
	parts := make([]string, len(doms))
	for i, d := range doms {
		parts[i] = p[d].String()
	}
	return strings.Join(parts, ",")
}

// Clone copies p.
func (p Position) Clone() Position {
	out := make(Position, len(p))
	for d, g := range p {
		out[d] = g
	}
	return out
}

// MarshalText stores a position as MariaDB writes it, so History reads well as JSON.
func (p Position) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText parses MariaDB's syntax.
func (p *Position) UnmarshalText(b []byte) error {
	q, err := ParsePosition(string(b))
	if err != nil {
		return err
	}
	*p = q
	return nil
}
