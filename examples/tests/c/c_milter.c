/*
 * A small libmilter (sendmail's libmilter, Debian libmilter-dev) milter used as a real peer
 * for our MTA-side client and as the C side of the milter throughput benchmark.
 *
 *   c_milter -p unix:/path/to/socket [-n] [-s]
 *
 *   -n  negotiate the NR_* "no reply" protocol options for every stage that has one
 *       (the same options our null-milter asks for with --no-reply)
 *   -s  stamp mode: at end of message add the header "X-C-Milter: stamped", add the
 *       recipient <added@dest.example>, and reject with "550 5.7.1 c-milter says no" when
 *       the Subject header contains "reject-me"
 *
 * Without -s every callback continues: the libmilter equivalent of our null-milter.
 * Build: cc -O2 -o c_milter c_milter.c -lmilter -lpthread
 */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static int no_reply = 0;
static int stamp = 0;

struct msgstate {
	int reject;
};

static sfsistat c_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
			    unsigned long f2, unsigned long f3, unsigned long *pf0,
			    unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
	(void)ctx; (void)f2; (void)f3;
	*pf0 = f0 & (SMFIF_ADDHDRS | SMFIF_ADDRCPT);
	*pf1 = 0;
	if (no_reply) {
		unsigned long nr = SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL |
				   SMFIP_NR_RCPT | SMFIP_NR_DATA | SMFIP_NR_UNKN |
				   SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY;
		*pf1 = f1 & nr;
	}
	*pf2 = 0;
	*pf3 = 0;
	return SMFIS_CONTINUE;
}

static sfsistat c_header(SMFICTX *ctx, char *name, char *value)
{
	if (stamp && strcasecmp(name, "Subject") == 0 && strstr(value, "reject-me") != NULL) {
		struct msgstate *st = smfi_getpriv(ctx);
		if (st == NULL) {
			st = calloc(1, sizeof *st);
			smfi_setpriv(ctx, st);
		}
		if (st != NULL)
			st->reject = 1;
	}
	return no_reply ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat c_continue_conn(SMFICTX *ctx, char *host, _SOCK_ADDR *addr)
{
	(void)ctx; (void)host; (void)addr;
	return no_reply ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat c_continue_str(SMFICTX *ctx, char *s)
{
	(void)ctx; (void)s;
	return no_reply ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat c_continue_argv(SMFICTX *ctx, char **argv)
{
	(void)ctx; (void)argv;
	return no_reply ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat c_unknown(SMFICTX *ctx, const char *cmd)
{
	(void)ctx; (void)cmd;
	return no_reply ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat c_continue(SMFICTX *ctx)
{
	(void)ctx;
	return no_reply ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat c_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
	(void)ctx; (void)chunk; (void)len;
	return no_reply ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat c_eom(SMFICTX *ctx)
{
	struct msgstate *st = smfi_getpriv(ctx);
	int reject = st != NULL && st->reject;
	free(st);
	smfi_setpriv(ctx, NULL);
	if (!stamp)
		return SMFIS_CONTINUE;
	if (reject) {
		smfi_setreply(ctx, "550", "5.7.1", "c-milter says no");
		return SMFIS_REJECT;
	}
	smfi_addheader(ctx, "X-C-Milter", "stamped");
	smfi_addrcpt(ctx, "<added@dest.example>");
	return SMFIS_CONTINUE;
}

static sfsistat c_abort(SMFICTX *ctx)
{
	free(smfi_getpriv(ctx));
	smfi_setpriv(ctx, NULL);
	return SMFIS_CONTINUE;
}

static sfsistat c_close(SMFICTX *ctx)
{
	free(smfi_getpriv(ctx));
	smfi_setpriv(ctx, NULL);
	return SMFIS_CONTINUE;
}

int main(int argc, char **argv)
{
	const char *sock = NULL;
	int c;
	while ((c = getopt(argc, argv, "p:ns")) != -1) {
		switch (c) {
		case 'p': sock = optarg; break;
		case 'n': no_reply = 1; break;
		case 's': stamp = 1; break;
		default:
			fprintf(stderr, "usage: %s -p SOCKET [-n] [-s]\n", argv[0]);
			return 2;
		}
	}
	if (sock == NULL) {
		fprintf(stderr, "usage: %s -p SOCKET [-n] [-s]\n", argv[0]);
		return 2;
	}
	struct smfiDesc desc = {
		"c_milter", SMFI_VERSION, SMFIF_ADDHDRS | SMFIF_ADDRCPT,
		c_continue_conn, c_continue_str, c_continue_argv, c_continue_argv,
		c_header, c_continue, c_body, c_eom, c_abort, c_close,
		c_unknown, c_continue, c_negotiate,
	};
	if (smfi_setconn((char *)sock) == MI_FAILURE || smfi_register(desc) == MI_FAILURE ||
	    smfi_opensocket(1) == MI_FAILURE) {
		fprintf(stderr, "c_milter: cannot listen on %s\n", sock);
		return 1;
	}
	return smfi_main() == MI_SUCCESS ? 0 : 1;
}
