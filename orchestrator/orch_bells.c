/* Doorbells: after a batch stores jobs, one core message per work queue
 * (model, tenant) that got any, so workers look at once (orch_loop_int.h). */
#include "orch_loop_int.h"

/* Rings the doorbells of the work queues that got jobs: a core message on
 * sluice.ctl.work.<model>.<tenant> whose body is the number of jobs
 * stored, sent once they are stored, so a worker that asks the queue right
 * away finds them (docs/wire.md). Best effort: workers also look for jobs
 * on their own every few hundred ms. */
void orch__bells_flush(orch_loop *l)
{
    char subj[SL_SUBJECT_MAX], body[16];

    for (int i = 0; i < l->nbells; i++) {
        if (sl_subject_bell(subj, sizeof(subj), l->bells[i].model, l->bells[i].tenant) != SL_OK)
            continue;
        snprintf(body, sizeof(body), "%d", l->bells[i].jobs);
        (void)natsConnection_PublishString(sl_bus_nc(l->bus), subj, body);
    }
    l->nbells = 0;
}

void orch__bell_add(orch_loop *l, const char *model, const char *tenant)
{
    for (int i = 0; i < l->nbells; i++) {
        if (strcmp(l->bells[i].model, model) == 0 && strcmp(l->bells[i].tenant, tenant) == 0) {
            l->bells[i].jobs++;
            return;
        }
    }
    if (!sl_id_valid(model) || !sl_id_valid(tenant))
        return;
    if (l->nbells == BELLS_MAX)
        orch__bells_flush(l);
    l->bells[l->nbells].model = model;
    memcpy(l->bells[l->nbells].tenant, tenant, strlen(tenant) + 1); /* a valid id: fits */
    l->bells[l->nbells].jobs = 1;
    l->nbells++;
}
