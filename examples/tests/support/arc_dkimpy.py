"""dkimpy's ARC as the independent peer of examples/tests/arc_dkimpy.rs.

    arc_dkimpy.py sign KEY.pem DOMAIN SELECTOR SRV_ID < msg > msg-with-new-set
    arc_dkimpy.py verify ZONE < msg          prints "<pass|fail|none> <reason>"

ZONE holds "<name> <TXT value>" lines (no DNS server needed: dkimpy's dnsfunc reads it).
`sign` seals with dkimpy.arc_sign: the message must carry an Authentication-Results field
of SRV_ID (its arc= result becomes cv=). Run with /opt/dkimpy/bin/python3 (see .ci/run).
"""
import sys

import dkim


def zone_lookup(path):
    records = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                name, value = line.split(None, 1)
                records[name.rstrip(".").lower()] = value.encode()

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        return records.get(name.rstrip(".").lower())

    return dnsfunc


def main():
    msg = sys.stdin.buffer.read()
    if sys.argv[1] == "sign":
        key, domain, selector, srv_id = sys.argv[2:6]
        with open(key, "rb") as f:
            pem = f.read()
        fields = dkim.arc_sign(msg, selector.encode(), domain.encode(), pem, srv_id.encode())
        if not fields:
            print("dkimpy did not seal", file=sys.stderr)
            sys.exit(2)
        sys.stdout.buffer.write(b"".join(fields) + msg)
    elif sys.argv[1] == "verify":
        cv, _results, reason = dkim.arc_verify(msg, dnsfunc=zone_lookup(sys.argv[2]))
        word = cv.decode() if cv else "fail"
        print(word, reason)
    else:
        sys.exit("usage: arc_dkimpy.py sign|verify ...")


if __name__ == "__main__":
    main()
