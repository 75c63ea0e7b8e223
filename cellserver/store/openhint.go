package store

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
)

// An open batch's first round trip only reads the packet row under its lock, and in the
// festival mix most batches are one open of a packet this very process committed a moment
// before (the gateway sends a packet's requests to one server of its cell). So the store
// remembers the packet rows it last committed, and a batch on a remembered, openable packet
// runs in ONE round trip: its conditional UPDATE comes first and takes the row lock, with the
// remembered values as its condition, then the inserts and COMMIT.
//
// The memo is a guess, never a source of truth: the UPDATE's WHERE names every column the
// shares are computed from (remaining cents and count, active status, expiry after now), so
// a batch that commits wrote exactly what the locked path would have written from the row it
// read. A guess that is wrong (another server of the cell opened the packet, the sweeper
// expired it, a failover lost the last commit) changes no row; its compound statement then
// SIGNALs before the inserts, the transaction is rolled back and the batch runs the locked
// path. A repeat among the users fails the receipt insert on its unique key, as in the
// locked path's first try. Batches of different packets that arrive together share the
// round trip and the transaction (guesscommit.go).

// rowMemoSize bounds the memo; past it an arbitrary entry makes room. A miss only costs the
// locked path's extra round trip.
const rowMemoSize = 16384

type rowMemo struct {
	mu   sync.Mutex
	rows map[int64]Packet
}

func (m *rowMemo) get(id int64) (Packet, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.rows[id]
	return p, ok
}

// remember keeps p when a later open could use it, and forgets the packet otherwise.
func (m *rowMemo) remember(p Packet, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if openable(&p, now) != nil || p.RemainingCount == 0 {
		delete(m.rows, p.ID)
		return
	}
	if m.rows == nil {
		m.rows = make(map[int64]Packet)
	}
	if _, ok := m.rows[p.ID]; !ok && len(m.rows) >= rowMemoSize {
		for k := range m.rows {
			delete(m.rows, k)
			break
		}
	}
	m.rows[p.ID] = p
}

func (m *rowMemo) forget(id int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.rows, id)
}

// errGuessStale is the message of the one-round-trip UPDATE when the row is not as remembered.
const errGuessStale = "packet row is not as this server last committed it"

// errGuessMissed: the remembered row was stale; the batch runs the locked path.
var errGuessMissed = errors.New(errGuessStale)

// errNoGuess: no remembered row fits the batch; it runs the locked path.
var errNoGuess = errors.New("no remembered packet row fits the batch")

// openOnGuess runs the batch in one round trip from the remembered row p, which the caller
// checked is openable with a share for each user. It returns errGuessMissed or errRepeatSeen
// (nothing written, the transaction rolled back) for the caller to run the locked path.
func (s *Store) openOnGuess(ctx context.Context, id int64, users []string, now time.Time, share ShareFunc, p Packet) ([]OpenOutcome, Packet, error) {
	packets, receipts := s.Tables(id)
	out, fresh, remaining, count, err := splitShares(p, users, make(map[string]Receipt, len(users)), nil, now, share)
	if err != nil {
		return nil, Packet{}, err
	}
	stmts, args := s.guessWrites(packets, receipts, id, fresh, now, p, remaining, count)
	err = s.commitGuess(ctx, id, stmts, args)
	var me *mysql.MySQLError
	switch {
	case errors.As(err, &me) && me.Number == errSignal && me.Message == errGuessStale, isMissingTable(err), isLockWait(err):
		// A missing day table is the locked path's to answer (archived, or unreadable); so
		// is a packet row another transaction holds (guessLockWait).
		return nil, Packet{}, errGuessMissed
	case isDuplicate(err):
		return nil, Packet{}, errRepeatSeen
	case err != nil:
		return nil, Packet{}, err
	}
	p.RemainingCents, p.RemainingCount = remaining, count
	return out, p, nil
}

// isLockWait reports a lock wait timeout (1205) or a deadlock (1213): the statement or the
// transaction lost its turn to another transaction on the same rows.
func isLockWait(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1205 || me.Number == 1213)
}

// errSignal is the error number of a SIGNAL with SQLSTATE '45000' and no MYSQL_ERRNO.
const errSignal = 1644

// guessWrites is the one-round-trip batch: the conditional UPDATE first (it takes the row
// lock, and SIGNALs when the row is not as guessed, before anything is written), then the
// receipt and outbox inserts of openInserts.
func (s *Store) guessWrites(packets, receipts string, id int64, fresh []Receipt, now time.Time, guess Packet, remaining int64, count int) (string, []any) {
	update := "BEGIN NOT ATOMIC SET STATEMENT innodb_lock_wait_timeout = " + strconv.Itoa(guessLockWait) + " FOR UPDATE " + packets + " SET remaining_cents = ?, remaining_count = ?, version = version + 1" +
		" WHERE id = ? AND remaining_cents = ? AND remaining_count = ? AND status = ? AND expires_ms > ?;" +
		" IF ROW_COUNT() <> 1 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '" + errGuessStale + "'; END IF; END;\n"
	args := []any{remaining, count, id, guess.RemainingCents, guess.RemainingCount, int(StatusActive), ms(now)}
	ins, insArgs := s.openInserts(receipts, id, fresh, now)
	return update + ins, append(args, insArgs...)
}
