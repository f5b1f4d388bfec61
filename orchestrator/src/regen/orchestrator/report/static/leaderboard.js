// Filtering of the leaderboard's side-by-side view; no library, no network.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const cases = Array.from($("sbs-list").querySelectorAll("article.case"));
  function apply() {
    const category = $("f-category").value;
    const status = $("f-status").value;
    const text = $("f-text").value.trim().toLowerCase();
    let shown = 0;
    for (const el of cases) {
      const keep =
        (!category || el.dataset.category === category) &&
        (!status || el.dataset.statuses.split(" ").includes(status)) &&
        (!text || el.dataset.case.toLowerCase().includes(text));
      el.classList.toggle("hidden", !keep);
      if (keep) shown += 1;
    }
    $("shown").textContent = shown + " of " + cases.length + " cases shown";
  }
  for (const id of ["f-category", "f-status", "f-text"]) {
    $(id).addEventListener("input", apply);
    $(id).addEventListener("change", apply);
  }
  apply();
})();
