// Injected into a copy of a built page by repro.report.layout: once the page has laid out, it records the content
// column's box, every table's box and whether a scroll container clips it, and every image's natural and shown
// width, as JSON in a pre element with the id repro-layout (read back from Chromium's --dump-dom).
setTimeout(() => {
  const column = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
  const box = column.getBoundingClientRect();
  const tables = [...column.querySelectorAll("table")].map((table, index) => {
    const r = table.getBoundingClientRect();
    let clipped = false;
    for (let e = table.parentElement; e && e !== column; e = e.parentElement) {
      if (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== "visible") clipped = true;
    }
    const head = table.querySelector("tr");
    return {index, left: r.left, right: r.right, width: r.width, clipped,
            header: head ? head.textContent.trim().replace(/\s+/g, " ").slice(0, 80) : ""};
  });
  const images = [...column.querySelectorAll("img")].map(img => ({
    src: img.currentSrc || img.src, natural: img.naturalWidth, shown: img.getBoundingClientRect().width}));
  const out = document.createElement("pre");
  out.id = "repro-layout";
  out.textContent = JSON.stringify({column: {left: box.left, right: box.right, width: box.width}, tables, images});
  document.body.appendChild(out);
}, 500);
