"""Hold the write lock of a database with a raw APSW connection until stdin closes.

    lock_holder.py DB

Prints "locked" once BEGIN IMMEDIATE has succeeded; rolls back when a line (or EOF)
arrives on stdin.
"""

import sys

import apsw


def main() -> None:
    conn = apsw.Connection(sys.argv[1])
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    sys.stdin.readline()
    conn.execute("ROLLBACK")
    conn.close()


if __name__ == "__main__":
    main()
