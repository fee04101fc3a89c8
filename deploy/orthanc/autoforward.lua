-- Auto-forward incoming MR instances from this PACS (Orthanc) to the dicomnode inference node.
--
-- Per instance (OnStoredInstance), not per study (OnStableStudy), because:
--   * the node's results (draft SR, secondary capture, later the VERIFIED SR) land in the SAME study:
--     a study-level trigger would fire again when they arrive and send the whole MR study a second
--     time, making the node measure it again;
--   * only OnStoredInstance tells us who sent the instance (origin.RemoteAet), which is how the
--     node's own results are told apart from the scanner's images;
--   * the node already waits for a quiet period per study before it measures, so Orthanc need not
--     wait for StableAge as well, and Orthanc's Lua job manager groups consecutive instances for the
--     same modality into one C-STORE job, so this does not open one association per instance.
--
-- Adapt NODE_MODALITY (the symbolic name in DicomModalities) and NODE_AET (the node's AE title).

NODE_MODALITY = 'dicomnode'
NODE_AET = 'DICOMNODE'

local function trim(value)
   return (string.gsub(value or '', '^%s*(.-)%s*$', '%1'))
end

function OnStoredInstance(instanceId, tags, metadata, origin)
   -- Never send the node its own results back.
   if origin ~= nil and trim(origin['RemoteAet']) == NODE_AET then
      return
   end
   if trim(tags['Modality']) ~= 'MR' then
      return
   end
   SendToModality(instanceId, NODE_MODALITY)
end
