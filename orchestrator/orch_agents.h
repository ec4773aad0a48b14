/* Agents: who answers which message. Loaded once at start from a JSON file
 * (SLUICE_AGENTS_FILE) or the built-in default, then read-only, so any
 * thread may read a loaded set without locking.
 *
 * File format: an object {"agents":[...]} or a bare array of agents, each
 *   {"name":"summarizer",            required, [A-Za-z0-9_-]{1,64}
 *    "model":"default",              required, the id in sluice.work.<model>.<t>
 *    "backend_model":"llama3",       optional, passed to the model backend
 *    "system_prompt":"...",          optional ("system" is accepted too)
 *    "match":"all" | "mention" | {"regex":"..."},   required
 *    "fallback":"...",               optional, the degraded reply text
 *    "max_concurrent":8}             optional, jobs per tenant, 0 = unbounded
 * Unknown keys, duplicate names and bad regular expressions are errors. */
#ifndef ORCH_AGENTS_H
#define ORCH_AGENTS_H

#include <regex.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_status.h"

#define ORCH_AGENTS_MAX       100
#define ORCH_DEFAULT_FALLBACK "Sorry, I can't answer right now. Please try again in a moment."

typedef enum orch_match_kind {
    ORCH_MATCH_ALL,     /* every user message (not agents' messages) */
    ORCH_MATCH_MENTION, /* messages that mention @name */
    ORCH_MATCH_REGEX,   /* messages matching a POSIX extended regex */
} orch_match_kind;

typedef struct orch_agent {
    char *name;
    char *model;
    char *backend_model; /* "" when unset */
    char *system_prompt; /* "" when unset */
    char *fallback;
    orch_match_kind match;
    char *pattern; /* the regex source, NULL unless ORCH_MATCH_REGEX */
    regex_t re;    /* compiled when ORCH_MATCH_REGEX */
    int64_t max_concurrent;
} orch_agent;

typedef struct orch_agents {
    orch_agent *v;
    size_t n;
} orch_agents;

/* Parses an agents document. Returns SL_OK with *out owned by the caller
 * (orch_agents_destroy); SL_ERR_INVAL with a reason naming the agent and
 * field in err; SL_ERR_NOMEM. */
sl_status orch_agents_parse(orch_agents **out, const char *json, char *err, size_t errlen);

/* Reads and parses the file at path; path NULL or "" gives the built-in
 * default (assistant: all, summarizer: mention, both on model "default").
 * Errors as orch_agents_parse, plus SL_ERR_IO when the file cannot be read;
 * err always names the file. */
sl_status orch_agents_load(orch_agents **out, const char *path, char *err, size_t errlen);

/* Frees a set; NULL-safe. */
void orch_agents_destroy(orch_agents *a);

/* Returns the agent called name and its index in *idx (idx may be NULL),
 * or NULL when there is none. */
const orch_agent *orch_agents_find(const orch_agents *a, const char *name, size_t *idx);

/* Returns true when text mentions @name: '@' not preceded by an id
 * character, then name (ASCII case-insensitive), then no id character. */
bool orch_text_mentions(const char *text, const char *name);

/* Returns true when agent a answers text by its match rule alone (the
 * router adds the author and hop rules). */
bool orch_agent_matches(const orch_agent *a, const char *text);

#endif
