// The dashboard of `bulksend serve` (docs/daemon.md, Dashboard): plain JavaScript, no library.
//
// Every figure comes from the admin API's JSON endpoints, fetched with the admin token as a
// bearer token; the token lives in this tab's sessionStorage, never in a cookie or a URL. Data is
// put in the page as text (textContent), never as markup, except the campaign report: an HTML
// fragment the daemon renders and escapes itself. The Content-Security-Policy the daemon sends
// keeps any script out of it.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const TOKEN_KEY = "bulksend.admin-token";
  const CAMPAIGN_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
  const TERMINAL = new Set(["canceled", "finished", "failed"]);
  const number = new Intl.NumberFormat();
  const rate = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // -- the admin API ------------------------------------------------------------------------
  function storedToken() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function api(path, { method = "GET", token = storedToken(), accept = [] } = {}) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        cache: "no-store",
        credentials: "omit",
        redirect: "error",
        referrerPolicy: "no-referrer",
      });
    } catch (error) {
      throw new ApiError(0, "the daemon does not answer (" + error.message + ")");
    }
    const type = response.headers.get("Content-Type") || "";
    const body = type.startsWith("application/json") ? await response.json() : null;
    if (!response.ok && !accept.includes(response.status)) {
      const message = body && typeof body.error === "string" ? body.error : response.statusText;
      throw new ApiError(response.status, message);
    }
    return body;
  }

  function campaignPath(id, rest = "") {
    return "/v1/campaigns/" + encodeURIComponent(id) + rest;
  }

  // -- building the page ---------------------------------------------------------------------
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) node.append(child);
    return node;
  }

  function count(n) {
    return n === null || n === undefined ? "–" : number.format(n);
  }

  function perSecond(n) {
    return n === null || n === undefined ? "–" : rate.format(n) + " /s";
  }

  function fillTable(id, rows, emptyId) {
    const body = document.querySelector("#" + id + " tbody");
    body.replaceChildren(...rows);
    $(id).hidden = rows.length === 0;
    $(emptyId).hidden = rows.length !== 0;
  }

  function cell(text, cls = "") {
    return el("td", { class: cls, text: String(text) });
  }

  function badge(state) {
    return el("span", { class: "badge state-" + state, text: state });
  }

  function progress(done, total) {
    const bar = el("progress", { max: Math.max(total || 0, 1), value: total ? done : 0 });
    const shown = total ? count(done) + " / " + count(total) + " (" + percent(done, total) + ")" : count(done);
    return [bar, el("span", { class: "progress-text", text: shown })];
  }

  function percent(done, total) {
    return total ? Math.floor((1000 * done) / total) / 10 + " %" : "–";
  }

  function card(title, value, detail, cls = "") {
    return el(
      "div",
      { class: "card " + cls },
      el("div", { class: "card-title", text: title }),
      el("div", { class: "card-value", text: value }),
      el("div", { class: "card-detail", text: detail }),
    );
  }

  // -- the overview --------------------------------------------------------------------------
  async function showOverview() {
    const [campaigns, overview, deadLetters] = await Promise.all([
      api("/v1/campaigns"),
      api("/v1/overview"),
      api("/v1/dead-letters"),
    ]);
    return () => {
      renderAccount(overview);
      renderCampaigns(campaigns.campaigns);
      renderJobStreams(overview.job_streams);
      renderSources(overview.sources, deadLetters);
      renderDeadLetters(deadLetters);
    };
  }

  function renderAccount(overview) {
    const flow = overview.flow;
    const cards = [];
    if (flow) {
      cards.push(
        card(
          "Measured rate",
          perSecond(flow.measured_rate_per_s),
          "ceiling " + perSecond(flow.ceiling_per_s) + " · limiter " + perSecond(flow.current_rate_per_s) +
            " · configured " + perSecond(flow.rate_per_s),
        ),
      );
      const max = flow.retry_tokens_max === null ? "" : " / " + rate.format(flow.retry_tokens_max);
      const low = flow.retry_tokens_max && flow.retry_tokens < flow.retry_tokens_max / 4;
      cards.push(
        card("Retry budget", rate.format(flow.retry_tokens) + max, count(flow.retries) + " retries so far",
          low ? "warn" : ""),
      );
      const breaker = { closed: "ok", "half-open": "warn", open: "bad" }[flow.circuit] || "";
      cards.push(card("Circuit breaker", flow.circuit, "opened " + count(flow.circuit_opened) + " times", breaker));
      cards.push(card("Throttled", count(flow.throttles), count(flow.failures) + " server or network failures"));
    } else {
      cards.push(card("Flow control", "–", "no figures from this daemon"));
    }
    cards.push(card("In flight", count(overview.in_flight), "send requests waiting for TEM"));
    cards.push(card("Tracking", count(overview.tracker_backlog), "emails submitted, not final yet"));
    $("account").replaceChildren(...cards);
  }

  function renderCampaigns(campaigns) {
    const rows = campaigns.map((c) => {
      const link = el("a", { href: "#/campaigns/" + encodeURIComponent(c.id), text: c.id });
      const statuses = c.counts;
      return el(
        "tr",
        { "data-campaign": c.id, "data-done": c.done },
        el("td", {}, link),
        el("td", {}, badge(c.state)),
        el("td", { class: "wide" }, ...progress(c.done, c.total)),
        cell(count(statuses["status:sent"] || 0), "num"),
        cell(count(statuses["status:failed"] || 0), "num"),
        cell(count(statuses.rejected || 0), "num"),
        cell(count(statuses.skipped || 0), "num"),
        cell(new Date(c.created_at).toLocaleString()),
      );
    });
    fillTable("campaigns", rows, "campaigns-empty");
  }

  function renderJobStreams(streams) {
    const rows = streams.map((s) => {
      const c = s.counts;
      return el(
        "tr",
        { "data-stream": s.template },
        cell(s.template),
        cell(count(s.done), "num done"),
        cell(count(c.pending || 0), "num"),
        cell(count(c.sending || 0), "num"),
        cell(count(c.submitted || 0), "num"),
        cell(count(c["status:sent"] || 0), "num"),
        cell(count(c["status:failed"] || 0), "num"),
        cell(count(c.rejected || 0), "num"),
      );
    });
    fillTable("job-streams", rows, "job-streams-empty");
  }

  function renderSources(sources, deadLetters) {
    const dead = new Map(deadLetters.sources.map((s) => [s.source, s.count]));
    const rows = sources.map((s) =>
      el(
        "tr",
        { "data-source": s.source },
        cell(s.source),
        cell(count(s.queue_lag), "num"),
        cell(count(dead.get(s.source) || 0), "num"),
      ),
    );
    fillTable("sources", rows, "sources-empty");
  }

  function renderDeadLetters(deadLetters) {
    const byKind = [];
    for (const source of deadLetters.sources) {
      for (const [kind, n] of Object.entries(source.by_kind)) byKind.push([source.source, kind, n]);
    }
    byKind.sort((a, b) => b[2] - a[2]);
    const rows = byKind.map(([source, kind, n]) =>
      el("tr", {}, cell(source), cell(kind), cell(count(n), "num")),
    );
    fillTable("dead-letters", rows, "dead-letters-empty");
    const recent = deadLetters.sources
      .flatMap((s) => s.recent.map((r) => ({ ...r, source: s.source })))
      .sort((a, b) => (a.at < b.at ? 1 : -1))
      .slice(0, 5)
      .map((r) =>
        el(
          "li",
          {},
          el("span", { class: "when", text: new Date(r.at).toLocaleTimeString() }),
          el("span", { class: "kind", text: r.kind }),
          el("span", { class: "reason", text: r.reason }),
        ),
      );
    $("dead-letters-recent").replaceChildren(...recent);
  }

  // -- one campaign --------------------------------------------------------------------------
  let shownReport = null; // the report fragment on the page (replaced only when it changed)
  let busy = false; // an action is under way: its buttons stay disabled

  async function showCampaign(id) {
    const [campaign, report] = await Promise.all([
      api(campaignPath(id)),
      api(campaignPath(id, "/report")).catch((error) => {
        if (error.status === 401) throw error;
        return { error: error.message };
      }),
    ]);
    return () => {
      renderCampaign(campaign);
      renderReport(report);
    };
  }

  function renderCampaign(c) {
    $("c-title").textContent = c.id;
    const state = $("c-state");
    state.textContent = c.state;
    state.className = "badge state-" + c.state;
    const bar = $("c-progress");
    bar.max = Math.max(c.total || 0, 1);
    bar.value = c.total ? c.done : 0;
    const done = $("c-done");
    done.dataset.done = String(c.done);
    done.textContent = c.total
      ? count(c.done) + " of " + count(c.total) + " recipients have their outcome (" + percent(c.done, c.total) + ")"
      : count(c.done) + " recipients have their outcome";
    const shown = [
      ["pending", c.counts.pending],
      ["sending", c.counts.sending],
      ["tracking", c.counts.submitted],
      ["sent", c.counts["status:sent"] || 0],
      ["failed", c.counts["status:failed"] || 0],
      ["canceled", c.counts["status:canceled"] || 0],
      ["rejected", c.counts.rejected],
      ["skipped", c.counts.skipped],
    ];
    $("c-counts").replaceChildren(
      ...shown.map(([name, n]) => el("div", {}, el("dt", { text: name }), el("dd", { text: count(n) }))),
    );
    $("c-error").hidden = !c.error;
    $("c-error").textContent = c.error || "";
    if (!busy) {
      $("c-pause").disabled = c.state !== "running";
      $("c-resume").disabled = c.state !== "paused";
      $("c-cancel").disabled = TERMINAL.has(c.state);
    }
  }

  function renderReport(report) {
    const area = $("report");
    if (report.error) {
      area.replaceChildren(el("p", { class: "error", text: "The report is not available: " + report.error }));
      shownReport = null;
      return;
    }
    if (report.html !== shownReport) {
      showFragment(area, report.html);
      shownReport = report.html;
    }
  }

  // The report's sections, as bulksend.reporting draws them for the report file: markup the
  // daemon renders, every value escaped (an attribute value never holds a bare `"`), and no script
  // (none would run under the CSP anyway). The CSP also refuses inline style attributes, which
  // the report uses for a few sizes (a domain's meter): they are parsed as data-bs-style and set
  // through the CSSOM once in the page, which the policy allows for the page's own script.
  function showFragment(area, html) {
    const template = document.createElement("template");
    template.innerHTML = html.replace(/ style="/g, ' data-bs-style="');
    const styled = Array.from(template.content.querySelectorAll("[data-bs-style]"));
    area.replaceChildren(template.content);
    for (const node of styled) {
      node.style.cssText = node.dataset.bsStyle;
      delete node.dataset.bsStyle;
    }
  }

  async function act(action) {
    const id = currentCampaign();
    if (id === null) return;
    if (action === "cancel" && !window.confirm("Cancel campaign " + id + "? What is not sent yet never will be.")) {
      return;
    }
    busy = true;
    for (const name of ["pause", "resume", "cancel"]) $("c-" + name).disabled = true;
    $("c-action-error").hidden = true;
    try {
      renderCampaign(await api(campaignPath(id, "/" + action), { method: "POST" }));
    } catch (error) {
      if (error.status === 401) return signedOut(error.message);
      $("c-action-error").textContent = action + " failed: " + error.message;
      $("c-action-error").hidden = false;
    } finally {
      busy = false;
    }
    refreshSoon();
  }

  // -- routing and refreshing ----------------------------------------------------------------
  function currentCampaign() {
    const match = /^#\/campaigns\/(.+)$/.exec(location.hash);
    if (!match) return null;
    let id;
    try {
      id = decodeURIComponent(match[1]);
    } catch {
      return "";
    }
    return CAMPAIGN_ID.test(id) ? id : "";
  }

  function show(view) {
    for (const name of ["login", "overview", "campaign"]) $(name).hidden = name !== view;
    $("forget").hidden = view === "login";
  }

  let timer = null;
  let generation = 0; // bumped by each refresh: an older one that answers late renders nothing
  let refreshes = 0;
  let shownCampaign; // the campaign the view shows (null: the overview)

  function refreshSoon(delay = 0) {
    clearTimeout(timer);
    timer = setTimeout(refresh, delay);
  }

  async function refresh() {
    if (!storedToken()) return;
    const mine = ++generation;
    const id = currentCampaign();
    try {
      if (id === "") throw new ApiError(404, "that is not a campaign id");
      const [render, ready] = await Promise.all([
        id === null ? showOverview() : showCampaign(id),
        api("/readyz", { accept: [503] }),
      ]);
      if (mine !== generation) return; // the view changed meanwhile: a newer refresh renders it
      if (id !== shownCampaign) {
        shownReport = null;
        $("report").replaceChildren();
        $("c-action-error").hidden = true;
        shownCampaign = id;
      }
      show(id === null ? "overview" : "campaign");
      render();
      renderReady(ready);
      refreshes += 1;
      document.body.dataset.refreshes = String(refreshes);
      $("updated").textContent = new Date().toLocaleTimeString();
      setStatus("", "");
    } catch (error) {
      if (mine !== generation) return;
      if (error.status === 401) return signedOut(error.message);
      setStatus(error.status === 404 ? error.message : "cannot refresh: " + error.message, "error");
    }
    if (mine === generation) refreshSoon(REFRESH_MS);
  }

  function renderReady(ready) {
    const pill = $("ready");
    pill.hidden = false;
    pill.textContent = ready.status === "ready" ? "ready" : "not ready: " + ready.failing.join(", ");
    pill.className = "pill " + (ready.status === "ready" ? "ok" : "bad");
  }

  function setStatus(text, cls) {
    $("status").textContent = text;
    $("status").className = "status " + cls;
  }

  function signedOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(timer);
    generation += 1;
    show("login");
    $("ready").hidden = true;
    setStatus("", "");
    loginError(message ? "The daemon refused the token: " + message + "." : "");
    $("token").focus();
  }

  function loginError(text) {
    $("login-error").textContent = text;
    $("login-error").hidden = !text;
  }

  async function signIn(event) {
    event.preventDefault();
    const candidate = $("token").value.trim();
    if (!candidate) return loginError("Enter the admin token.");
    const button = event.target.querySelector("button");
    button.disabled = true;
    try {
      await api("/v1/overview", { token: candidate });
    } catch (error) {
      loginError(
        error.status === 401
          ? "The daemon refused this token: " + error.message + "."
          : "Cannot check the token: " + error.message + ".",
      );
      return;
    } finally {
      button.disabled = false;
    }
    sessionStorage.setItem(TOKEN_KEY, candidate);
    $("token").value = "";
    loginError("");
    refreshSoon();
  }

  function start() {
    $("login-form").addEventListener("submit", signIn);
    $("forget").addEventListener("click", () => signedOut(""));
    for (const action of ["pause", "resume", "cancel"]) {
      $("c-" + action).addEventListener("click", () => act(action));
    }
    window.addEventListener("hashchange", () => refreshSoon());
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refreshSoon();
    });
    if (storedToken()) refreshSoon();
    else signedOut("");
  }

  start();
})();
