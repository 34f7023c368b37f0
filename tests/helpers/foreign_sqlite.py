"""Another SQLite program on orch's file: Python's own sqlite3 module, not APSW.

    foreign_sqlite.py DB read        open, read, close (the last-user checkpoint runs here)
    foreign_sqlite.py DB exclusive   BEGIN EXCLUSIVE, print "locked", wait for a line on
                                     stdin, print the time in epoch ms, commit, close

It is often an older SQLite than orch's, as a user's own scripts would be.
"""

import sqlite3
import sys
import time


def main() -> None:
    db, what = sys.argv[1:3]
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    if what == "read":
        conn.execute("SELECT count(*) FROM items").fetchone()
    else:
        conn.execute("BEGIN EXCLUSIVE")
        print("locked", flush=True)
        sys.stdin.readline()
        print(int(time.time() * 1000), flush=True)
        conn.execute("COMMIT")
    conn.close()


if __name__ == "__main__":
    main()
