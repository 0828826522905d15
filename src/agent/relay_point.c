/*
 * relay_point.c: relay points (XRAY §5.2 step 4, see agent_int.h): where
 * the client's and the server's links meet, bound to a token and to the
 * certificate expected on each side.
 *
 * A relay point lives until both sides are linked, then hands the two
 * links to the relay engine as one relay through the application's
 * filters; unused, it expires, so a token is never a standing opening.
 */
#include "agent/agent_int.h"
#include "core/log.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void xr_rp_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

/* Tear down: close the links still attached, answer a waiting CONNECT. */
void xr__rp_fail(xr_rp_t *rp, int code, const char *why)
{
    if (rp->dead)
        return;
    if (!rp->failed)
        xr_log(XR_LOG_NOTICE, "agent: relay point %llu (%s) failed: %s",
               (unsigned long long) rp->id, rp->what, why);
    if (rp->early && !rp->failed && rp->side[0] == NULL) {
        /* The client's link has not come yet: keep the reason for it. */
        rp->failed = 1;
        rp->fail_code = code;
        rp->via = NULL; /* an answer still to come finds no relay point */
        snprintf(rp->fail_why, sizeof(rp->fail_why), "%s", why);
        xr_ctl_t *d = rp->side[1];
        rp->side[1] = NULL;
        for (xr_list_t *q = xr__ag.sessions.next; q != &xr__ag.sessions; q = q->next) {
            xr_ctl_t *x = xr_container_of(q, xr_ctl_t, link);
            if (x->rp == rp)
                x->rp = NULL;
        }
        if (d != NULL)
            xr__ctl_close(d, "its relay point failed");
        return;
    }
    rp->dead = 1;
    rp->via = NULL;
    if (rp->open)
        xr__open_abandon(rp);
    if (rp->requester != NULL) {
        xr__ctl_error(rp->requester, rp->req_id, code, "%s", why);
        xr__ctl_flush(rp->requester);
        rp->requester = NULL;
    }
    for (int i = 0; i < 2; i++) {
        xr_ctl_t *s = rp->side[i];
        rp->side[i] = NULL;
        if (s != NULL) {
            s->rp = NULL;
            if (s->kind == XR_KIND_LINK) /* a link waiting for LINK_OK learns why */
                xr__ctl_error(s, 0, code, "%s", why);
            xr__ctl_close(s, "its relay point failed");
        }
    }
    for (xr_list_t *q = xr__ag.sessions.next; q != &xr__ag.sessions; q = q->next) {
        xr_ctl_t *s = xr_container_of(q, xr_ctl_t, link);
        if (s->rp == rp)
            s->rp = NULL;
    }
    xr_list_remove(&rp->link);
    xr__ag.nrps--;
    uv_timer_stop(&rp->timer);
    uv_close((uv_handle_t *) &rp->timer, xr_rp_timer_closed);
}

static void xr_rp_expire(uv_timer_t *t)
{
    xr_rp_t *rp = t->data;
    if (!rp->failed)
        xr__ag.n.rp_expired++;
    rp->early = 0; /* nobody to keep a reason for any more */
    xr__rp_fail(rp, XR_PERR_TIMEOUT, "not linked on both sides in time");
}

void xr__rp_end(xr_rp_t *rp)
{
    rp->requester = NULL;
    rp->early = 0;
    rp->failed = 1; /* nothing to log */
    xr__rp_fail(rp, XR_PERR_INTERNAL, "served");
}

xr_rp_t *xr__rp_new(const xr_app_conf_t *app, const char *what)
{
    xr_rp_t *rp = calloc(1, sizeof(*rp));
    if (rp == NULL)
        return NULL;
    rp->id = ++xr__ag.next_rp;
    rp->app = app;
    rp->dial_side = -1;
    randombytes_buf(rp->token, sizeof(rp->token));
    snprintf(rp->what, sizeof(rp->what), "%s", what);
    uv_timer_init(xr__ag.loop, &rp->timer);
    rp->timer.data = rp;
    /* Unused relay points expire (XRAY §5.2: bound to a token and a peer,
     * not a standing opening). */
    uv_timer_start(&rp->timer, xr_rp_expire, (uint64_t) xr__ag.conf->handshake_timeout * 2, 0);
    xr_list_insert_tail(&xr__ag.rps, &rp->link);
    xr__ag.nrps++;
    return rp;
}

static xr_rp_t *xr_rp_find(const uint8_t *token)
{
    for (xr_list_t *q = xr__ag.rps.next; q != &xr__ag.rps; q = q->next) {
        xr_rp_t *rp = xr_container_of(q, xr_rp_t, link);
        if (!rp->dead && sodium_memcmp(rp->token, token, XR_PROTO_TOKEN) == 0)
            return rp;
    }
    return NULL;
}

/* Relay points and running relays of app: what max_relays bounds. */
size_t xr__rp_count(const xr_app_conf_t *app)
{
    size_t n = (size_t) xr_worker_rt(app->relay)->active;
    for (xr_list_t *q = xr__ag.rps.next; q != &xr__ag.rps; q = q->next) {
        const xr_rp_t *rp = xr_container_of(q, xr_rp_t, link);
        n += rp->app == app && !rp->dead && !rp->failed;
    }
    return n;
}

/* Both sides linked: LINK_OK to the links that came to us, then one relay. */
static void xr_rp_complete(xr_rp_t *rp)
{
    xr_ctl_t *s[2] = {rp->side[0], rp->side[1]};
    for (int i = 0; i < 2; i++)
        if (i != rp->dial_side) {
            xr_msg_t ok = {.type = XR_MSG_LINK_OK};
            xr__ctl_send(s[i], &ok);
            if (xr__ctl_flush(s[i]) != XR_OK || s[i]->outlen > 0) {
                /* a LINK_OK that does not fit the socket at once is a
                 * peer not reading: give up rather than buffer */
                xr__rp_fail(rp, XR_PERR_UNREACHABLE, "a link does not read");
                return;
            }
        }
    xr_end_t *ends[2] = {&s[0]->end, &s[1]->end};
    const unsigned char *pend[2] = {s[0]->in, s[1]->in};
    size_t npend[2] = {s[0]->inlen, s[1]->inlen};
    struct sockaddr_storage client = s[0]->remote;
    uint64_t id = rp->id;
    xr_relay_rt_t *rt = xr_worker_rt(rp->app->relay);
    xr_log(XR_LOG_INFO, "agent: relay point %llu linked: %s", (unsigned long long) id, rp->what);
    xr__ag.n.relayed++;
    rp->side[0] = rp->side[1] = NULL;
    s[0]->rp = s[1]->rp = NULL;
    rp->requester = NULL;
    rp->via = NULL;
    rp->dead = 1;
    xr_list_remove(&rp->link);
    xr__ag.nrps--;
    uv_timer_stop(&rp->timer);
    uv_close((uv_handle_t *) &rp->timer, xr_rp_timer_closed);
    /* Each side's first frame after LINK_OK is its end-to-end ACK: the
     * protocol's, not the application's stream, so no filter sees it. */
    const uint32_t raw[2] = {XR_PROTO_HEADER, XR_PROTO_HEADER};
    xr_relay_join(xr__ag.loop, rt, ends, pend, npend, raw, &client, id);
    xr__ctl_free(s[0]);
    xr__ctl_free(s[1]);
}

void xr__rp_linked(xr_rp_t *rp, int side, xr_ctl_t *c)
{
    if (side == rp->dial_side)
        rp->fallback = 0; /* the server took our link */
    rp->side[side] = c;
    rp->linked[side] = 1;
    c->rp = rp;
    c->side = side;
    c->state = XR_CTL_LINKED;
    uv_timer_stop(&c->timer);
    if (rp->linked[0] && rp->linked[1])
        xr_rp_complete(rp);
}

/* A LINK arrived on a connection that came to us. */
void xr__ctl_link(xr_ctl_t *c, const xr_msg_t *m)
{
    xr_rp_t *rp = xr_rp_find(m->u.link.token);
    if (rp != NULL && rp->failed && strcmp(rp->key[0], c->key) == 0) {
        xr__ctl_error(c, 0, rp->fail_code, "%s", rp->fail_why);
        rp->early = 0;
        xr__rp_fail(rp, rp->fail_code, rp->fail_why); /* told: now it can go */
        xr__ctl_close(c, "its relay point had failed");
        return;
    }
    int side = -1;
    for (int i = 0; rp != NULL && i < 2; i++)
        if (i != rp->dial_side && !rp->linked[i] && strcmp(rp->key[i], c->key) == 0)
            side = i;
    if (rp == NULL || side < 0) {
        xr__ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: link from %s (%s) refused: %s", c->peer_addr, c->who,
               rp == NULL ? "no relay point has that token"
                          : "not the certificate the relay point expects");
        xr__ctl_error(c, 0, XR_PERR_BAD_TOKEN, "%s",
                      rp == NULL ? "no such relay point"
                                 : "wrong certificate for this relay point");
        xr__ctl_close(c, "bad link");
        return;
    }
    c->kind = XR_KIND_LINK;
    xr__rp_linked(rp, side, c);
}
