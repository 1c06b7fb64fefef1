-- OpenDKIM's miltertest (Debian package `miltertest`) plays the MTA against stamp-milter.
-- Run by tests/milter_miltertest.rs as:
--   miltertest -D socket=unix:/path/stamp.sock -s stamp.lua
-- stamp-milter was started with: --add-header "X-Stamp: yes" --add-rcpt added@dest.example
--   --replace-body "replaced\n" --reject-pattern reject-me --reject-reply "550 5.7.1 no thanks"
-- Any failed check raises an error, which makes miltertest exit nonzero.

local function check(cond, what)
	if not cond then
		error(what)
	end
end

local function expect_continue(conn, rc, what)
	check(rc == nil, what .. " failed")
	check(mt.getreply(conn) == SMFIR_CONTINUE, what .. ": unexpected reply")
end

local function start_message(conn, subject)
	mt.macro(conn, SMFIC_CONNECT, "j", "mx.dest.example", "{daemon_name}", "miltertest")
	expect_continue(conn, mt.conninfo(conn, "client.example", "192.0.2.1"), "conninfo")
	expect_continue(conn, mt.helo(conn, "client.example"), "helo")
	mt.macro(conn, SMFIC_MAIL, "i", "4ABC123")
	expect_continue(conn, mt.mailfrom(conn, "<alice@src.example>"), "mailfrom")
	expect_continue(conn, mt.rcptto(conn, "<bob@dest.example>"), "rcptto")
	expect_continue(conn, mt.data(conn), "data")
	expect_continue(conn, mt.header(conn, "From", "alice@src.example"), "header From")
	expect_continue(conn, mt.header(conn, "Subject", subject), "header Subject")
end

-- 1. A message asking for a new body: header added, recipient added, body replaced, accepted.
local conn = mt.connect(socket, 40, 0.25)
check(conn ~= nil, "mt.connect(" .. tostring(socket) .. ") failed")
start_message(conn, "hello")
expect_continue(conn, mt.header(conn, "X-Replace-Body", "yes"), "header X-Replace-Body")
expect_continue(conn, mt.eoh(conn), "eoh")
expect_continue(conn, mt.bodystring(conn, "original body\r\n"), "body")
check(mt.eom(conn) == nil, "eom failed")
check(mt.getreply(conn) == SMFIR_ACCEPT, "eom: expected ACCEPT")
check(mt.eom_check(conn, MT_HDRADD, "X-Stamp", "yes"), "no X-Stamp: yes added")
check(mt.eom_check(conn, MT_RCPTADD, "<added@dest.example>"), "no recipient added")
check(mt.eom_check(conn, MT_BODYCHANGE, "replaced\r\n"), "body not replaced")
mt.disconnect(conn)

-- 2. A message matching the reject pattern: the chosen SMTP reply, and no modification.
conn = mt.connect(socket, 40, 0.25)
check(conn ~= nil, "second mt.connect failed")
start_message(conn, "please reject-me")
expect_continue(conn, mt.eoh(conn), "eoh")
expect_continue(conn, mt.bodystring(conn, "spam\r\n"), "body")
check(mt.eom(conn) == nil, "eom failed")
check(mt.getreply(conn) == SMFIR_REPLYCODE, "eom: expected REPLYCODE")
check(mt.eom_check(conn, MT_SMTPREPLY, "550", "5.7.1", "no thanks"), "wrong SMTP reply")
check(not mt.eom_check(conn, MT_HDRADD), "a header was added to a rejected message")
mt.disconnect(conn)

mt.echo("stamp.lua: all checks passed")
