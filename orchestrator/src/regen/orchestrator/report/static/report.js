// Filtering and sorting of the report's cases; no library, no network.
(function () {
  "use strict";
  const list = document.getElementById("case-list");
  const cases = Array.from(list.querySelectorAll("article.case"));
  const $ = (id) => document.getElementById(id);
  const controls = ["f-category", "f-status", "f-metric", "f-max", "sort-key", "sort-dir", "f-text"].map($);

  function value(el, metric) {
    const raw = el.getAttribute("data-m-" + metric);
    return raw === null || raw === "" ? null : Number(raw);
  }

  function apply() {
    const category = $("f-category").value;
    const status = $("f-status").value;
    const metric = $("f-metric").value;
    const maxText = $("f-max").value.trim();
    const max = maxText === "" ? null : Number(maxText);
    const text = $("f-text").value.trim().toLowerCase();
    let shown = 0;
    for (const el of cases) {
      let keep = (!category || el.dataset.category === category) && (!status || el.dataset.status === status);
      if (keep && text) keep = el.dataset.case.toLowerCase().includes(text);
      if (keep && max !== null && !Number.isNaN(max)) {
        const v = value(el, metric);
        keep = v !== null && v <= max;
      }
      el.classList.toggle("hidden", !keep);
      if (keep) shown += 1;
    }
    const key = $("sort-key").value;
    const dir = $("sort-dir").value === "desc" ? -1 : 1;
    const sorted = cases.slice().sort((a, b) => {
      if (key === "order") return Number(a.dataset.order) - Number(b.dataset.order);
      const va = value(a, key);
      const vb = value(b, key);
      // Cases without a value (failed, pending) go last either way.
      if (va === null || vb === null) return (va === null) - (vb === null) || Number(a.dataset.order) - Number(b.dataset.order);
      return (va - vb) * dir || Number(a.dataset.order) - Number(b.dataset.order);
    });
    const fragment = document.createDocumentFragment();
    for (const el of sorted) fragment.appendChild(el);
    list.appendChild(fragment);
    $("shown").textContent = shown + " of " + cases.length + " cases shown";
  }

  for (const el of controls) {
    el.addEventListener("input", apply);
    el.addEventListener("change", apply);
  }
  $("expand").addEventListener("click", () => {
    const open = $("expand").textContent === "open all";
    for (const d of list.querySelectorAll("details")) d.open = open;
    $("expand").textContent = open ? "close all" : "open all";
  });
  apply();
})();
