#include "orch_router.h"

#include <string.h>

size_t orch_route(const orch_agents *a, const char *text, const char *author_agent, uint32_t hops,
                  uint32_t hop_limit, size_t *idx, size_t cap)
{
    size_t n = 0;

    if (a == NULL || hops >= hop_limit)
        return 0;
    for (size_t i = 0; i < a->n && n < cap; i++) {
        if (author_agent != NULL && strcmp(author_agent, a->v[i].name) == 0)
            continue;
        /* "all" means every person's message: an agent answering every
         * agent's message would turn each reply into a chain up to the hop
         * limit. Agents answer agents by mention or regex. */
        if (author_agent != NULL && a->v[i].match == ORCH_MATCH_ALL)
            continue;
        if (orch_agent_matches(&a->v[i], text))
            idx[n++] = i;
    }
    return n;
}

void orch_followers_of(const orch_agents *a, const char *author, uint32_t hops, uint32_t hop_limit,
                       orch_followers *out)
{
    out->mentions_only = true;
    out->n = 0;
    if (a == NULL || hops >= hop_limit)
        return;
    for (size_t i = 0; i < a->n; i++) {
        const orch_agent *x = &a->v[i];
        if (strcmp(author, x->name) == 0 || x->match == ORCH_MATCH_ALL)
            continue;
        if (x->match != ORCH_MATCH_MENTION) {
            out->mentions_only = false;
            out->n = 0;
            return;
        }
        if (out->n < ORCH_AGENTS_MAX)
            out->names[out->n++] = x->name;
    }
}
