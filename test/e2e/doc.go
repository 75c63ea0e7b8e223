// Package e2e holds end-to-end tests of a whole SET on this machine: real MariaDB, memcached,
// cellserver and gateway processes started by internal/localset, driven through the gateway by
// the load tool's library, and audited against docs/design.md §4 from the cells' databases.
//
// The tests start every process on 127.0.0.1 under temporary directories and never touch a
// SET a developer runs (`make up` keeps its data in .localset). Run them with `make e2e`.
package e2e
