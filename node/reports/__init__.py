"""The DICOM objects the node sends back: draft and verified SR, secondary capture, SEG.

Every object is built through highdicom/pydicom from a measured stack and the source images it was
measured on; each one keeps the source's Study Instance UID exactly, so a PACS files it with the study.
"""
