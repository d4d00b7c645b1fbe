"""The gallery page's template, style and script: plain HTML, CSS and a few lines of JavaScript.

The page allows itself nothing but its own inline style and script (by hash) and images from its
folder: no network, and no script a prompt could smuggle in would run.
"""

from __future__ import annotations

__all__ = ["PAGE", "SCRIPT", "STYLE"]

STYLE = """
:root { color-scheme: light dark; --bg: #f6f6f4; --card: #fff; --ink: #1d1d1f; --dim: #6b6b70;
  --line: #deded9; --saved: #1f7a3f; --refused: #a15c00; --failed: #b3261e;
  --outcome_unknown: #5b4bb7; }
@media (prefers-color-scheme: dark) { :root { --bg: #151517; --card: #1f1f22; --ink: #ececee;
  --dim: #a0a0a8; --line: #333338; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; background: var(--bg); color: var(--ink); }
header { position: sticky; top: 0; z-index: 1; display: flex; flex-wrap: wrap; gap: .5rem 1rem;
  align-items: center; padding: .75rem 1rem; background: var(--bg);
  border-bottom: 1px solid var(--line); }
h1 { font-size: 1.1rem; margin: 0 .5rem 0 0; }
nav { display: flex; flex-wrap: wrap; gap: .25rem; }
button { font: inherit; padding: .2rem .6rem; border: 1px solid var(--line); border-radius: 99px;
  background: var(--card); color: var(--ink); cursor: pointer; }
button[aria-pressed="true"] { background: var(--ink); color: var(--bg); }
input[type=search] { font: inherit; padding: .25rem .6rem; min-width: 16rem;
  border: 1px solid var(--line); border-radius: 6px; background: var(--card); color: var(--ink); }
.count, .cost { color: var(--dim); }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 1rem;
  padding: 1rem; }
.card { display: flex; flex-direction: column; background: var(--card); border-radius: 10px;
  border: 1px solid var(--line); overflow: hidden; }
.card[hidden] { display: none; }
.thumb { display: flex; align-items: center; justify-content: center; aspect-ratio: 4 / 3;
  overflow: hidden; background: var(--line); color: var(--dim); text-decoration: none; }
.thumb img { width: 100%; height: 100%; object-fit: contain; display: block; }
.meta { padding: .6rem .75rem .75rem; }
.badge { display: inline-block; font-size: .75rem; font-weight: 600; color: #fff;
  padding: 0 .45rem; border-radius: 4px; }
.badge.saved { background: var(--saved); } .badge.refused { background: var(--refused); }
.badge.failed { background: var(--failed); }
.badge.outcome_unknown { background: var(--outcome_unknown); }
.prompt { margin: .4rem 0; display: -webkit-box; -webkit-line-clamp: 3;
  -webkit-box-orient: vertical; overflow: hidden; overflow-wrap: anywhere; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 0 .6rem; margin: 0; font-size: .8rem; }
dt { color: var(--dim); } dd { margin: 0; overflow-wrap: anywhere; }
dd.down { color: var(--failed); font-weight: 600; }
.error { margin: .4rem 0 0; font-size: .8rem; color: var(--failed); overflow-wrap: anywhere; }
"""

SCRIPT = """
const cards = [...document.querySelectorAll(".card")];
const prompts = cards.map((card) => card.dataset.prompt.toLowerCase());
const buttons = [...document.querySelectorAll("[data-filter]")];
const search = document.getElementById("search");
let status = "all";
function apply() {
  const words = search.value.trim().toLowerCase();
  let shown = 0;
  cards.forEach((card, i) => {
    const show = (status === "all" || card.dataset.status === status)
      && (!words || prompts[i].includes(words));
    card.hidden = !show;
    shown += show;
  });
  document.getElementById("shown").textContent = shown;
}
buttons.forEach((button) => button.addEventListener("click", () => {
  status = button.dataset.filter;
  buttons.forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
  apply();
}));
search.addEventListener("input", apply);
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' file:; \
style-src 'sha256-{style_hash}'; script-src 'sha256-{script_hash}'; base-uri 'none'; \
form-action 'none'">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<nav aria-label="status">{buttons}</nav>
<input id="search" type="search" placeholder="Search prompts" aria-label="Search prompts">
<span class="count"><span id="shown">{shown}</span> shown</span>
{totals}
</header>
<main>
{cards}
</main>
<script>{script}</script>
</body>
</html>
"""
