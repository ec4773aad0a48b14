/* Routing: which agents answer a message. Pure functions over a loaded
 * agents set; safe from any thread. */
#ifndef ORCH_ROUTER_H
#define ORCH_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orch_agents.h"

/* Writes to idx[0..cap) the indexes of the agents that answer a message
 * with this text, in agents-file order, and returns how many. author_agent
 * is the agent that wrote the message (NULL or "" for a user message): an
 * agent never answers itself. hops is the message's hop count along the
 * causal chain; when hops >= hop_limit nobody answers (the loop guard). */
size_t orch_route(const orch_agents *a, const char *text, const char *author_agent, uint32_t hops,
                  uint32_t hop_limit, size_t *idx, size_t cap);

/* Who could answer an agent's answer (the agent message the worker posts
 * back to SLUICE_IN), as far as the agents set and the hop count tell
 * before the answer's text is known. */
typedef struct orch_followers {
    bool mentions_only; /* false: some agent answers by regex; publish always */
    size_t n;           /* with mentions_only: the agents answering a mention */
    const char *names[ORCH_AGENTS_MAX];
} orch_followers;

/* Fills *out for the answer of agent author carrying hops hops: the rules
 * of orch_route with the text left open. No agent when hops >= hop_limit;
 * never author itself nor an agent matching "all"; a "mention" agent
 * answers only when the text names it; a "regex" agent may answer any
 * text, so then mentions_only is false. */
void orch_followers_of(const orch_agents *a, const char *author, uint32_t hops, uint32_t hop_limit,
                       orch_followers *out);

#endif
