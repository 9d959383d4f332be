-- @source data://{{ clinic }}/physicians.csv
-- @param ehr=unknown
-- @key physician_id
-- @assert not_null(physician_id)
-- @assert unique(physician_id)
-- @assert rows > 0
-- Physicians of the clinic, shared by every EHR group (common/varian mounts
-- this directory through common/varian/base.sql). The physician export sits
-- at the clinic's data root, outside the EHR folder. `ehr` names the source
-- system; each EHR group's mount file sets it.
SELECT
  physician_id,
  npi,
  specialty,
  CASE upper(trim(active)) WHEN 'Y' THEN 1 ELSE 0 END AS is_active,
  '{{ehr}}' AS source_system
FROM physicians
ORDER BY physician_id;
