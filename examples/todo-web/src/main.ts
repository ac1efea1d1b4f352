// pgsat todo demo: the signed-in user's todos, live from Postgres.
// Page URL: ?url=ws://127.0.0.1:5134/ws&token=<JWT>  (else a form asks for them)
// Optional: &persist=0 (no IndexedDB).
// The first connect takes a snapshot (protocol 1.1) of what the server's read
// rules let this user read; the replica, its LSN and view_id are kept in
// IndexedDB, so a reload resumes from there. When the view changed (rules or
// the token's claims: RESYNC_REQUIRED) the client clears and snapshots again.
import { IndexedDbStore, PgsatClient, type ClientError, type Status } from "@pgsat/client";

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;
const params = new URLSearchParams(location.search);
const url = params.get("url") ?? localStorage.getItem("pgsat.url") ?? "";
const token = params.get("token") ?? localStorage.getItem("pgsat.token") ?? "";

if (url === "" || token === "") {
  const form = $<HTMLFormElement>("connect");
  form.hidden = false;
  (form.elements.namedItem("url") as HTMLInputElement).value = url || `ws://${location.hostname || "127.0.0.1"}:5134/ws`;
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    localStorage.setItem("pgsat.url", String(data.get("url")));
    localStorage.setItem("pgsat.token", String(data.get("token")));
    location.search = "";
  });
} else {
  void start(url, token);
}

/** The `user_id` claim of a JWT (not verified: only to show the user and name the local copy). */
function userOf(jwt: string): string {
  try {
    const body = jwt.split(".")[1] ?? "";
    const json = atob(body.replace(/-/g, "+").replace(/_/g, "/"));
    return String((JSON.parse(json) as { user_id?: unknown }).user_id ?? "");
  } catch {
    return "";
  }
}

async function start(url: string, token: string): Promise<void> {
  const user = userOf(token);
  $("user").textContent = user ? `of ${user}` : "";
  const persist = params.get("persist") !== "0";
  const store = persist ? new IndexedDbStore({ clientKey: `${url}|${user}` }) : undefined;
  const client = new PgsatClient({
    url,
    getToken: async () => token,
    snapshot: true,
    persistence: store,
    onError: (e) => console.warn("pgsat:", e.message),
  });
  client.subscribe(render);
  client.onStatus((_s: Status, err: ClientError | null) => {
    if (err?.code === "RESYNC_REQUIRED") $("info").textContent = "What this user may read changed: the local copy was replaced by a fresh snapshot.";
  });

  function render(): void {
    const snap = client.getSnapshot();
    const st = $("status");
    st.textContent = snap.status + (snap.error && snap.status !== "live" ? ` (${snap.error.code})` : "");
    st.dataset.status = snap.status;
    $("lsn").textContent = String(snap.lsn);
    $("view").textContent = snap.viewId;
    // No filtering here: the server's read rules decide which rows this user gets.
    const rows = (snap.tables["public.todos"]?.rows ?? [])
      .slice()
      .sort((a, b) => Number(a.id) - Number(b.id));
    $("count").textContent = `${rows.length} todo${rows.length === 1 ? "" : "s"}`;
    const ul = $("todos");
    const items = rows.map((r) => {
      const li = document.createElement("li");
      li.dataset.id = String(r.id);
      li.className = r.done ? "done" : "";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = r.done === true;
      box.disabled = true;
      const title = document.createElement("span");
      title.className = "title";
      title.textContent = String(r.title);
      li.append(box, " ", title);
      return li;
    });
    ul.replaceChildren(...items);
  }

  const forget = $<HTMLButtonElement>("forget");
  forget.hidden = !persist;
  forget.onclick = async () => {
    client.close();
    await store?.clear();
    location.reload();
  };

  render();
  await client.connect(); // resolves once the IndexedDB copy (if any) is loaded
  const restored = client.lsn;
  const n = client.getTable("todos")?.rows.length ?? 0;
  const source = $("source");
  source.dataset.restoredLsn = String(restored);
  source.dataset.restoredRows = String(n);
  source.dataset.restoredView = client.viewId;
  source.textContent = restored > 0n ? `restored ${n} from IndexedDB at lsn ${restored}` : persist ? "no local copy yet" : "not persisted";
  (window as unknown as { pgsat: PgsatClient }).pgsat = client;
}
