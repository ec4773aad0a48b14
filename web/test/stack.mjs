// Starts a real Sluice stack for the web tests: nats-server with JetStream
// on a free port and a temporary store, then sluice-orchestrator,
// sluice-worker and sluice-gateway, each with its own admin port, waiting for
// every /readyz to answer 200. All traffic stays on 127.0.0.1.
//
//   const stack = await startStack();
//   stack.wsUrl, stack.httpUrl, await stack.token('acme', 'ann')
//   await stack.killGateway(); await stack.restartGateway();
//   await stack.stop();
//
// Binaries come from SLUICE_BIN_DIR (default <repo>/bin). Process logs go to
// the temporary directory; SLUICE_KEEP_LOGS=1 keeps it after stop().

import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const WEB_ROOT = path.resolve(HERE, '..');
export const REPO_ROOT = path.resolve(WEB_ROOT, '..');
export const BIN_DIR = path.resolve(process.env.SLUICE_BIN_DIR || path.join(REPO_ROOT, 'bin'));
export const ARTIFACTS_DIR = path.join(REPO_ROOT, 'tests', 'artifacts');

const live = new Set(); // every child still running, killed on exit whatever happens
process.on('exit', () => {
    for (const child of live) {
        try {
            child.kill('SIGKILL');
        } catch {
            /* gone */
        }
    }
});

/** Resolves with a free TCP port on 127.0.0.1 (the kernel picks it). */
export function freePort() {
    return new Promise((resolve, reject) => {
        const srv = net.createServer();
        srv.unref();
        srv.on('error', reject);
        srv.listen(0, '127.0.0.1', () => {
            const { port } = srv.address();
            srv.close(() => resolve(port));
        });
    });
}

function sleep(ms) {
    return new Promise((r) => setTimeout(r, ms));
}

function tcpOpen(port) {
    return new Promise((resolve) => {
        const s = net.connect({ host: '127.0.0.1', port });
        s.once('connect', () => {
            s.destroy();
            resolve(true);
        });
        s.once('error', () => resolve(false));
        s.setTimeout(500, () => {
            s.destroy();
            resolve(false);
        });
    });
}

/** GETs http://127.0.0.1:<port><path> (with `agent` when given); resolves with {status, body, headers}, rejects on a network error or timeout. */
export function httpGet(port, urlPath, { timeoutMs = 2000, agent } = {}) {
    return new Promise((resolve, reject) => {
        const opts = { host: '127.0.0.1', port, path: urlPath, timeout: timeoutMs };
        if (agent !== undefined) opts.agent = agent;
        const req = http.get(opts, (res) => {
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (d) => {
                body += d;
            });
            res.on('end', () => resolve({ status: res.statusCode, body, headers: res.headers }));
        });
        req.on('timeout', () => req.destroy(new Error('timeout')));
        req.on('error', reject);
    });
}

function tail(file, lines = 30) {
    try {
        return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
        return '(no log)';
    }
}

/** One child process with its log file, started by the stack. */
class Proc {
    constructor(name, cmd, args, env, logFile) {
        this.name = name;
        this.cmd = cmd;
        this.args = args;
        this.env = env;
        this.logFile = logFile;
        this.child = null;
        this.exit = null;
    }

    start() {
        const fd = fs.openSync(this.logFile, 'a');
        this.exit = null;
        const child = spawn(this.cmd, this.args, { env: this.env, stdio: ['ignore', fd, fd] });
        fs.closeSync(fd);
        this.child = child;
        live.add(child);
        this.exited = new Promise((resolve) => {
            child.on('exit', (code, signal) => {
                live.delete(child);
                this.exit = { code, signal };
                resolve(this.exit);
            });
            child.on('error', (err) => {
                live.delete(child);
                this.exit = { code: -1, signal: null, error: err };
                resolve(this.exit);
            });
        });
        return this;
    }

    get running() {
        return this.child !== null && this.exit === null;
    }

    /** Sends `signal` and waits (bounded) for the exit. */
    async kill(signal = 'SIGKILL', { timeoutMs = 10000 } = {}) {
        if (!this.running) return this.exit;
        this.child.kill(signal);
        const timer = sleep(timeoutMs).then(() => 'timeout');
        const r = await Promise.race([this.exited, timer]);
        if (r === 'timeout') {
            this.child.kill('SIGKILL');
            await this.exited;
        }
        return this.exit;
    }

    logTail(lines) {
        return tail(this.logFile, lines);
    }
}

async function waitReady(proc, adminPort, { timeoutMs = 20000 } = {}) {
    const deadline = Date.now() + timeoutMs;
    let last = 'no answer';
    for (let i = 0; Date.now() < deadline && i < 10000; i += 1) {
        if (!proc.running) {
            throw new Error(`${proc.name} exited (${JSON.stringify(proc.exit)}) before it was ready; log:\n${proc.logTail()}`);
        }
        try {
            const r = await httpGet(adminPort, '/readyz', { timeoutMs: 1000 });
            if (r.status === 200) return;
            last = `HTTP ${r.status} ${r.body.slice(0, 200)}`;
        } catch (err) {
            last = err.message;
        }
        await sleep(50);
    }
    throw new Error(`${proc.name} not ready after ${timeoutMs} ms (${last}); log:\n${proc.logTail()}`);
}

/** Tells whether the stack's binaries are present (tests that need them fail loudly without). */
export function binariesPresent() {
    return ['sluice-gateway', 'sluice-orchestrator', 'sluice-worker', 'sluicectl'].every((b) => fs.existsSync(path.join(BIN_DIR, b)));
}

/**
 * Starts nats-server and the three tiers. Options: `env` (extra SLUICE_*
 * variables for every tier), `gatewayEnv` (for the gateway only),
 * `readyTimeoutMs`. Resolves with the stack handle; rejects with the failing
 * process's log tail (after stopping what had started).
 */
export async function startStack({ env = {}, gatewayEnv = {}, readyTimeoutMs = 20000 } = {}) {
    for (const b of ['sluice-gateway', 'sluice-orchestrator', 'sluice-worker', 'sluicectl']) {
        if (!fs.existsSync(path.join(BIN_DIR, b))) {
            throw new Error(`${path.join(BIN_DIR, b)} is missing: build the binaries first (make) or set SLUICE_BIN_DIR`);
        }
    }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-web-'));
    const secret = randomBytes(24).toString('hex');
    const [natsPort, wsPort, gwAdmin, orchAdmin, wrkAdmin] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort()]);
    const base = {
        PATH: process.env.PATH,
        HOME: process.env.HOME ?? dir,
        SLUICE_NATS_URL: `nats://127.0.0.1:${natsPort}`,
        SLUICE_JWT_SECRET: secret,
        SLUICE_LISTEN: `127.0.0.1:${wsPort}`,
        SLUICE_WEB_ROOT: WEB_ROOT,
        SLUICE_DEV_MODE: '1',
        SLUICE_ECHO_TOKEN_DELAY_MS: '20',
        ...env,
    };
    if (process.env.ASAN_OPTIONS) base.ASAN_OPTIONS = process.env.ASAN_OPTIONS;
    if (process.env.UBSAN_OPTIONS) base.UBSAN_OPTIONS = process.env.UBSAN_OPTIONS;

    const procs = {
        nats: new Proc('nats-server', 'nats-server', ['-js', '-a', '127.0.0.1', '-p', String(natsPort), '-sd', path.join(dir, 'js')], base, path.join(dir, 'nats.log')),
        orchestrator: new Proc('sluice-orchestrator', path.join(BIN_DIR, 'sluice-orchestrator'), [], { ...base, SLUICE_ADMIN_LISTEN: `127.0.0.1:${orchAdmin}` }, path.join(dir, 'orchestrator.log')),
        worker: new Proc('sluice-worker', path.join(BIN_DIR, 'sluice-worker'), [], { ...base, SLUICE_ADMIN_LISTEN: `127.0.0.1:${wrkAdmin}` }, path.join(dir, 'worker.log')),
        gateway: new Proc('sluice-gateway', path.join(BIN_DIR, 'sluice-gateway'), [], { ...base, ...gatewayEnv, SLUICE_ADMIN_LISTEN: `127.0.0.1:${gwAdmin}` }, path.join(dir, 'gateway.log')),
    };

    const stack = {
        dir,
        secret,
        natsPort,
        wsPort,
        adminPorts: { gateway: gwAdmin, orchestrator: orchAdmin, worker: wrkAdmin },
        wsUrl: `ws://127.0.0.1:${wsPort}/v1/ws`,
        httpUrl: `http://127.0.0.1:${wsPort}/`,
        procs,

        /** Mints a JWT with `sluicectl token`; resolves with it. */
        token(tenant, sub, { ttl } = {}) {
            const args = ['token', '--tenant', tenant, '--sub', sub];
            if (ttl !== undefined) args.push('--ttl', String(ttl));
            return new Promise((resolve, reject) => {
                execFile(path.join(BIN_DIR, 'sluicectl'), args, { env: base, timeout: 10000 }, (err, stdout, stderr) => {
                    if (err) reject(new Error(`sluicectl token failed: ${err.message} ${stderr}`));
                    else resolve(stdout.trim());
                });
            });
        },

        /** SIGKILLs the gateway and waits for it to be gone. */
        async killGateway() {
            await procs.gateway.kill('SIGKILL');
        },

        /** Starts the gateway again on the same ports and waits until it is ready. */
        async restartGateway() {
            if (procs.gateway.running) await procs.gateway.kill('SIGKILL');
            // The port is free as soon as the process is gone, but allow a
            // few tries in case the kernel still holds it.
            let lastErr;
            for (let i = 0; i < 5; i += 1) {
                procs.gateway.start();
                try {
                    await waitReady(procs.gateway, gwAdmin, { timeoutMs: readyTimeoutMs });
                    return;
                } catch (err) {
                    lastErr = err;
                    if (procs.gateway.running) throw err;
                    await sleep(200);
                }
            }
            throw lastErr;
        },

        /** The last lines of every process's log, for assertion messages. */
        logs(lines = 20) {
            return Object.values(procs)
                .map((p) => `--- ${p.name}\n${p.logTail(lines)}`)
                .join('\n');
        },

        /** Stops everything (SIGTERM, then SIGKILL) and removes the temporary directory. */
        async stop() {
            for (const p of [procs.gateway, procs.worker, procs.orchestrator]) await p.kill('SIGTERM', { timeoutMs: 5000 });
            await procs.nats.kill('SIGTERM', { timeoutMs: 5000 });
            if (process.env.SLUICE_KEEP_LOGS === '1') {
                process.stderr.write(`stack logs kept in ${dir}\n`);
            } else {
                fs.rmSync(dir, { recursive: true, force: true });
            }
        },
    };

    try {
        procs.nats.start();
        const deadline = Date.now() + readyTimeoutMs;
        for (let i = 0; !(await tcpOpen(natsPort)); i += 1) {
            if (!procs.nats.running) throw new Error(`nats-server exited; log:\n${procs.nats.logTail()}`);
            if (Date.now() > deadline || i > 10000) throw new Error(`nats-server not accepting on ${natsPort}; log:\n${procs.nats.logTail()}`);
            await sleep(30);
        }
        procs.orchestrator.start();
        procs.worker.start();
        await Promise.all([waitReady(procs.orchestrator, orchAdmin, { timeoutMs: readyTimeoutMs }), waitReady(procs.worker, wrkAdmin, { timeoutMs: readyTimeoutMs })]);
        procs.gateway.start();
        await waitReady(procs.gateway, gwAdmin, { timeoutMs: readyTimeoutMs });
    } catch (err) {
        await stack.stop().catch(() => {});
        throw err;
    }
    return stack;
}
