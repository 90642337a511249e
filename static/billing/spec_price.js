// The create form's "≈ price per hour" follows the chosen spec and region, shown under the
// spec's select. The prices come per region ("" for any region: the range over regions).
(function () {
  "use strict";
  var data = document.getElementById("spec-prices");
  var select = document.getElementById("id_spec");
  var region = document.getElementById("id_region");
  var price = document.getElementById("spec-price");
  if (!data || !select || !price) { return; }
  var prices = JSON.parse(data.textContent);
  price.classList.add("form-text", "mb-0");
  select.parentNode.insertBefore(price, select.nextSibling);
  function show() {
    var inRegion = prices[(region && region.value) || ""] || prices[""] || {};
    price.textContent = inRegion[select.value] || "";
  }
  select.addEventListener("change", show);
  if (region) { region.addEventListener("change", show); }
  show();
})();
