/* Routing: which agents answer a message. Pure functions over a loaded
 * agents set; safe from any thread. */
#ifndef ORCH_ROUTER_H
#define ORCH_ROUTER_H

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

#endif
