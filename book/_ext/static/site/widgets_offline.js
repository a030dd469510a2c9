// Loaded on pages with ipywidgets, after require.js and before the widget HTML manager
// (see nb_ipywidgets_js in _config.yml and book/_ext/offline_assets.py).
(function () {
  // The manager bundle asks require.js for its icon fonts relative to its module name,
  // which would resolve against the page's folder; map that name to the vendored copy.
  var here = document.currentScript ? document.currentScript.src : "";
  var vendor = here.replace(/site\/widgets_offline\.js(\?.*)?$/, "vendor/");
  if (window.requirejs && vendor) {
    window.requirejs.config({
      paths: { "@jupyter-widgets/html-manager/dist": vendor + "html-manager" },
    });
  }
  // Widget labels are typeset through the MathJax 2 call MathJax.Hub.Queue; the site runs
  // MathJax 3, so forward that call to typesetPromise once MathJax has started.
  function install() {
    var mj = window.MathJax;
    if (!mj || mj.Hub) return;
    mj.Hub = {
      Queue: function (job) {
        var m = window.MathJax;
        if (!Array.isArray(job) || job[0] !== "Typeset" || !m || !m.startup) return;
        // Widget labels write inline math as $...$, which the site's MathJax does not treat
        // as a delimiter (prose math arrives as \(...\)); rewrite it before typesetting.
        var el = job[2];
        if (el && el.childElementCount === 0 && /\$[^$]+\$/.test(el.textContent)) {
          el.textContent = el.textContent.replace(/\$([^$]+)\$/g, "\\($1\\)");
        }
        m.startup.promise
          .then(function () { return m.typesetPromise([job[2]]); })
          .catch(function (err) { console.warn("MathJax could not typeset a widget label", err); });
      },
    };
  }
  // MathJax's script is deferred, so it has replaced its configuration object by then.
  document.addEventListener("DOMContentLoaded", install);
})();
